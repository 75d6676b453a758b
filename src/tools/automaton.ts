/**
 * One Thompson NFA per validator, matched through a lazily built DFA: each (DFA state, character
 * class) transition is computed once by subset construction and cached for every later text. Past
 * a cap on DFA states the match continues as a plain NFA simulation, so time stays linear in the
 * text (times the NFA size) and memory stays bounded whatever the input.
 *
 * A guard (a one-character negative lookahead, `notFollowedBy`) is a state that stays in the
 * closure like a character state; stepping on a code unit outside its set continues through it
 * first, and at the end of the text it always passes. Its set joins the character classes, so a
 * class still decides every transition.
 */
import { CharSet, type Pattern } from './regex.js';

/** The pattern expands to more NFA states than allowed. */
export class AutomatonTooLarge extends Error {
  constructor(limit: number) {
    super(`the pattern needs more than ${limit} automaton states`);
    this.name = 'AutomatonTooLarge';
  }
}

export type MatchOutcome =
  | { readonly ok: true }
  | {
      readonly ok: false;
      /** Index of the first code unit no live state accepts, or `text.length` if the text ended too early. */
      readonly index: number;
      /** Labels of the states still alive just before `index`, ascending. */
      readonly expected: readonly number[];
      /** The end of the text would have been accepted at `index`. */
      readonly endExpected: boolean;
    };

export interface AutomatonLimits {
  readonly maxNfaStates?: number;
  readonly maxDfaStates?: number;
}

const CHAR = 0;
/** ε-moves to `out1` and, if ≥ 0, `out2`. */
const SPLIT = 1;
const MATCH = 2;
/** Passes to `out1` when the next code unit is not in its set, or at the end of the text. */
const GUARD = 3;

const UNKNOWN = -1;
const DEAD = -2;
const OVERFLOW = -3;
const NO_LABEL = -1;
/** DFA transition cells (states × classes) allowed per automaton. */
const MAX_DFA_CELLS = 4_000_000;
/** NFA state ids held by all DFA states together (their sets and keys). */
const MAX_DFA_MEMBERS = 2_000_000;

class Builder {
  readonly kind: number[] = [];
  readonly out1: number[] = [];
  readonly out2: number[] = [];
  readonly label: number[] = [];
  readonly sets: (CharSet | undefined)[] = [];
  readonly #memo = new Map<Pattern, Map<string, number>>();
  readonly #max: number;

  constructor(max: number) {
    this.#max = max;
  }

  add(kind: number, out1: number, out2: number, label: number, s?: CharSet): number {
    if (this.kind.length >= this.#max) throw new AutomatonTooLarge(this.#max);
    this.kind.push(kind);
    this.out1.push(out1);
    this.out2.push(out2);
    this.label.push(label);
    this.sets.push(s);
    return this.kind.length - 1;
  }

  /**
   * Continuation style: build `p` so that it continues to state `next`, return its entry state.
   * The same pattern object built towards the same continuation is shared, which keeps patterns
   * that reuse a subtree (the validator's "rest of the sequence") linear in size.
   */
  build(p: Pattern, next: number, label: number): number {
    if (p.type === 'set') return this.add(CHAR, next, -1, label, p.set);
    if (p.type === 'guard') return this.add(GUARD, next, -1, label, p.set);
    const key = `${next}:${label}`;
    let byNext = this.#memo.get(p);
    const known = byNext?.get(key);
    if (known !== undefined) return known;
    const entry = this.#build(p, next, label);
    if (byNext === undefined) this.#memo.set(p, (byNext = new Map()));
    byNext.set(key, entry);
    return entry;
  }

  #build(p: Exclude<Pattern, { type: 'set' | 'guard' }>, next: number, label: number): number {
    switch (p.type) {
      case 'seq': {
        let entry = next;
        for (let i = p.items.length - 1; i >= 0; i--) entry = this.build(p.items[i] as Pattern, entry, label);
        return entry;
      }
      case 'alt': {
        if (p.alts.length === 0) return next;
        let entry = this.build(p.alts[p.alts.length - 1] as Pattern, next, label);
        for (let i = p.alts.length - 2; i >= 0; i--) entry = this.add(SPLIT, this.build(p.alts[i] as Pattern, next, label), entry, NO_LABEL);
        return entry;
      }
      case 'repeat': {
        let entry = next;
        if (p.max === Infinity) {
          entry = this.add(SPLIT, -1, next, NO_LABEL);
          this.out1[entry] = this.build(p.body, entry, label);
        } else {
          // X{0,k} as (X(X(…)?)?)?, every skip going straight to `next`.
          for (let i = p.min; i < p.max; i++) entry = this.add(SPLIT, this.build(p.body, entry, label), next, NO_LABEL);
        }
        for (let i = 0; i < p.min; i++) entry = this.build(p.body, entry, label);
        return entry;
      }
      case 'label':
        return this.build(p.body, next, p.label);
    }
  }
}

export class Automaton {
  readonly #kind: Uint8Array;
  readonly #out1: Int32Array;
  readonly #out2: Int32Array;
  readonly #label: Int32Array;
  readonly #sets: readonly (CharSet | undefined)[];
  readonly #final: number;
  readonly #hasGuards: boolean;
  /** Character classes: class k holds code units `bounds[k]` … `bounds[k+1] - 1`. */
  readonly #bounds: Int32Array;
  readonly #ascii: Uint16Array;
  readonly #classes: number;
  // Lazily built DFA.
  readonly #maxDfaStates: number;
  readonly #dfaSets: Int32Array[] = [];
  readonly #dfaKeys = new Map<string, number>();
  #dfaMembers = 0;
  #accepting = new Uint8Array(16);
  #trans: Int32Array;
  // Scratch space for ε-closures.
  readonly #mark: Uint32Array;
  readonly #stack: Int32Array;
  #generation = 0;

  private constructor(b: Builder, start: number, final: number, maxDfaStates: number) {
    const n = b.kind.length;
    this.#kind = Uint8Array.from(b.kind);
    this.#out1 = Int32Array.from(b.out1);
    this.#out2 = Int32Array.from(b.out2);
    this.#label = Int32Array.from(b.label);
    this.#sets = b.sets;
    this.#final = final;
    this.#hasGuards = this.#kind.includes(GUARD);
    this.#mark = new Uint32Array(n);
    this.#stack = new Int32Array(n);

    const starts = new Set<number>([0]);
    for (const s of b.sets) {
      if (s === undefined) continue;
      for (let i = 0; i + 1 < s.ranges.length; i += 2) {
        starts.add(s.ranges[i] ?? 0);
        starts.add((s.ranges[i + 1] ?? 0) + 1);
      }
    }
    this.#bounds = Int32Array.from([...starts].filter((c) => c <= 0xffff).sort((x, y) => x - y));
    this.#classes = this.#bounds.length;
    this.#ascii = new Uint16Array(128);
    for (let c = 0; c < 128; c++) this.#ascii[c] = this.#classOf(c);
    this.#maxDfaStates = Math.max(1, Math.min(maxDfaStates, Math.floor(MAX_DFA_CELLS / this.#classes)));
    this.#trans = new Int32Array(16 * this.#classes).fill(UNKNOWN);
    this.#addDfaState(this.#closure([start]));
  }

  static compile(pattern: Pattern, limits: AutomatonLimits = {}): Automaton {
    const b = new Builder(limits.maxNfaStates ?? 50_000);
    const final = b.add(MATCH, -1, -1, NO_LABEL);
    const start = b.build(pattern, final, NO_LABEL);
    return new Automaton(b, start, final, limits.maxDfaStates ?? 10_000);
  }

  get nfaStates(): number {
    return this.#kind.length;
  }

  get dfaStates(): number {
    return this.#dfaSets.length;
  }

  /** Does the whole of `text` match? */
  match(text: string): MatchOutcome {
    const ascii = this.#ascii;
    const classes = this.#classes;
    let trans = this.#trans;
    let d = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      // Indexes are in range by construction; `!` keeps the hot loop free of extra checks.
      const k = c < 128 ? ascii[c]! : this.#classOf(c);
      let next = trans[d * classes + k]!;
      if (next < 0) {
        if (next === UNKNOWN) {
          next = this.#computeTransition(d, k);
          trans = this.#trans;
        }
        if (next === OVERFLOW) return this.#simulate(text, i, this.#dfaSets[d] ?? new Int32Array(0));
        if (next === DEAD) return this.#failure(i, this.#dfaSets[d]);
      }
      d = next;
    }
    return this.#accepting[d] === 1 ? { ok: true } : this.#failure(text.length, this.#dfaSets[d]);
  }

  /**
   * `states` followed by every state reached through the guards among them that pass: all guards
   * when `c` is undefined (the end of the text), else those whose set lacks `c`. Each guard is
   * crossed once, so the list stays within the NFA's size per guard.
   */
  #throughGuards(states: Int32Array, c: number | undefined): ArrayLike<number> {
    if (!this.#hasGuards) return states;
    let all: number[] | undefined;
    let crossed: Set<number> | undefined;
    for (let i = 0; i < (all ?? states).length; i++) {
      const s = (all ?? states)[i] ?? 0;
      if (this.#kind[s] !== GUARD || (c !== undefined && this.#sets[s]?.has(c) === true)) continue;
      crossed ??= new Set();
      if (crossed.has(s)) continue;
      crossed.add(s);
      all ??= Array.from(states);
      for (const t of this.#closure([this.#out1[s] ?? -1])) all.push(t);
    }
    return all ?? states;
  }

  /** Would the text be accepted if it ended with `states` alive? */
  #accepts(states: Int32Array): boolean {
    const all = this.#throughGuards(states, undefined);
    for (let i = 0; i < all.length; i++) if (all[i] === this.#final) return true;
    return false;
  }

  #classOf(c: number): number {
    const b = this.#bounds;
    let lo = 0;
    let hi = b.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if ((b[mid] ?? 0) <= c) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** The sorted CHAR and MATCH states reachable from `seeds` by ε-moves. */
  #closure(seeds: readonly number[]): Int32Array {
    if (++this.#generation === 0xffffffff) {
      this.#mark.fill(0);
      this.#generation = 1;
    }
    const gen = this.#generation;
    const mark = this.#mark;
    const stack = this.#stack;
    let sp = 0;
    const out: number[] = [];
    for (const s of seeds) {
      if (mark[s] !== gen) {
        mark[s] = gen;
        stack[sp++] = s;
      }
    }
    while (sp > 0) {
      const s = stack[--sp] ?? 0;
      if (this.#kind[s] !== SPLIT) {
        out.push(s);
        continue;
      }
      for (const t of [this.#out1[s] ?? -1, this.#out2[s] ?? -1]) {
        if (t >= 0 && mark[t] !== gen) {
          mark[t] = gen;
          stack[sp++] = t;
        }
      }
    }
    return Int32Array.from(out).sort();
  }

  /** The states entered from `states` on a code unit `c`. */
  #step(states: Int32Array, c: number): number[] {
    const seeds: number[] = [];
    const all = this.#throughGuards(states, c);
    for (let i = 0; i < all.length; i++) {
      const s = all[i] ?? 0;
      if (this.#kind[s] === CHAR && this.#sets[s]?.has(c) === true) seeds.push(this.#out1[s] ?? -1);
    }
    return seeds;
  }

  #addDfaState(states: Int32Array): number {
    const id = this.#dfaSets.length;
    this.#dfaSets.push(states);
    this.#dfaMembers += states.length;
    this.#dfaKeys.set(states.join(','), id);
    if (id >= this.#accepting.length) {
      const accepting = new Uint8Array(this.#accepting.length * 2);
      accepting.set(this.#accepting);
      this.#accepting = accepting;
      const trans = new Int32Array(accepting.length * this.#classes).fill(UNKNOWN);
      trans.set(this.#trans);
      this.#trans = trans;
    }
    this.#accepting[id] = this.#accepts(states) ? 1 : 0;
    return id;
  }

  #computeTransition(d: number, k: number): number {
    const seeds = this.#step(this.#dfaSets[d] ?? new Int32Array(0), this.#bounds[k] ?? 0);
    let next = DEAD;
    if (seeds.length > 0) {
      const states = this.#closure(seeds);
      const known = this.#dfaKeys.get(states.join(','));
      if (known !== undefined) next = known;
      else if (this.#dfaSets.length >= this.#maxDfaStates || this.#dfaMembers + states.length > MAX_DFA_MEMBERS) return OVERFLOW;
      else next = this.#addDfaState(states);
    }
    this.#trans[d * this.#classes + k] = next;
    return next;
  }

  /** Plain NFA simulation from `states` at `from`, once the DFA cache is full. */
  #simulate(text: string, from: number, states: Int32Array): MatchOutcome {
    let current = states;
    for (let i = from; i < text.length; i++) {
      const seeds = this.#step(current, text.charCodeAt(i));
      if (seeds.length === 0) return this.#failure(i, current);
      current = this.#closure(seeds);
    }
    return this.#accepts(current) ? { ok: true } : this.#failure(text.length, current);
  }

  #failure(index: number, states: Int32Array | undefined): MatchOutcome {
    const labels = new Set<number>();
    const alive = states ?? new Int32Array(0);
    for (const s of alive) {
      if (s !== this.#final && (this.#label[s] ?? NO_LABEL) !== NO_LABEL) labels.add(this.#label[s] ?? NO_LABEL);
    }
    return { ok: false, index, expected: [...labels].sort((a, b) => a - b), endExpected: this.#accepts(alive) };
  }
}
