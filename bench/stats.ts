/** Small numeric helpers shared by the bench sections. */

/** Nearest-rank percentile (p in 0..100) of an already sorted array; NaN when empty. */
export function percentileSorted(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  const index = Math.min(sorted.length - 1, Math.max(0, rank - 1));
  return sorted[index] ?? Number.NaN;
}

/** Sort a copy (numeric) so percentiles can be read from it. */
export function sortedCopy(values: ArrayLike<number>): Float64Array {
  const copy = Float64Array.from(values);
  copy.sort();
  return copy;
}

/** Round to `digits` decimals (for readable JSON). */
export function round(value: number, digits = 2): number {
  if (!Number.isFinite(value)) return value;
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

/** Milliseconds since `start` (a `process.hrtime.bigint()` value). */
export function msSince(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e6;
}

export function log(line: string): void {
  process.stderr.write(`[bench] ${line}\n`);
}

export const MIB = 1024 * 1024;
