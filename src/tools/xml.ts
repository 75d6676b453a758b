import * as fs from 'node:fs/promises';
import xml2js from 'xml2js';
import type { XmlElement } from './types.js';

/** Toolbox and tool XML files are small; anything bigger is a mistake or an attack. */
export const MAX_XML_BYTES = 5 * 1024 * 1024;
/** Deeper nesting than any tool needs; keeps the conversion's recursion bounded. */
const MAX_DEPTH = 256;
/**
 * Every tag name gets this prefix while xml2js works: its intermediate objects keep text under
 * `_`, attributes under `$`, children under `$$` and text nodes as `__text__`, so an element named
 * `_` or `__text__` would otherwise collide with that bookkeeping.
 */
const TAG_PREFIX = 'e:';

/** An XML file could not be read, was refused, or is not well-formed. */
export class XmlParseError extends Error {
  readonly where: string;
  /** The message without the leading `where: `. */
  readonly reason: string;
  constructor(where: string, message: string, options?: { cause?: unknown }) {
    super(`${where}: ${message}`, options);
    this.name = 'XmlParseError';
    this.where = where;
    this.reason = message;
  }
}

/** Read and parse an XML file (at most `MAX_XML_BYTES`). Throws `XmlParseError`. */
export async function parseXmlFile(file: string): Promise<XmlElement> {
  let handle: fs.FileHandle;
  try {
    // O_NONBLOCK: a FIFO planted in place of a tool file must not hang the loader.
    handle = await fs.open(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (error) {
    throw new XmlParseError(file, `cannot read: ${describe(error)}`, { cause: error });
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new XmlParseError(file, 'not a regular file');
    if (st.size > MAX_XML_BYTES) throw new XmlParseError(file, `larger than ${MAX_XML_BYTES} bytes`);
    // One byte more than stat() promised: a file that grew since is noticed, never read unbounded.
    const buffer = Buffer.alloc(st.size + 1);
    let length = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, length);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length > st.size) throw new XmlParseError(file, 'changed while being read');
    }
    return await parseXml(buffer.subarray(0, length).toString('utf8'), file);
  } catch (error) {
    if (error instanceof XmlParseError) throw error;
    throw new XmlParseError(file, `cannot read: ${describe(error)}`, { cause: error });
  } finally {
    await handle.close();
  }
}

/**
 * Parse XML text into an `XmlElement` tree (children and text in document order, comments
 * dropped, CDATA as text). `where` names the source in error messages. DOCTYPE and ENTITY
 * declarations are refused outright (no XXE, no entity expansion bombs).
 */
export async function parseXml(text: string, where: string): Promise<XmlElement> {
  if (Buffer.byteLength(text, 'utf8') > MAX_XML_BYTES) throw new XmlParseError(where, `larger than ${MAX_XML_BYTES} bytes`);
  // Conservative on purpose: also refuses the words inside comments or CDATA.
  if (/<!DOCTYPE/i.test(text)) throw new XmlParseError(where, 'DOCTYPE declarations are not allowed');
  if (/<!ENTITY/i.test(text)) throw new XmlParseError(where, 'ENTITY declarations are not allowed');
  const parser = new xml2js.Parser({
    explicitRoot: true,
    explicitArray: true,
    explicitChildren: true,
    preserveChildrenOrder: true,
    charsAsChildren: true,
    includeWhiteChars: true,
    trim: false,
    normalize: false,
    normalizeTags: false,
    xmlns: false,
    strict: true,
    async: false,
    tagNameProcessors: [(name: string) => TAG_PREFIX + name],
  });
  let result: unknown;
  try {
    result = await parser.parseStringPromise(text);
  } catch (error) {
    throw new XmlParseError(where, `not well-formed XML: ${firstLine(describe(error))}`, { cause: error });
  }
  if (!isRecord(result)) throw new XmlParseError(where, 'no root element');
  const keys = Object.keys(result);
  const rootKey = keys[0];
  if (keys.length !== 1 || rootKey === undefined) throw new XmlParseError(where, 'no root element');
  return convert(result[rootKey], rootKey, where, 0);
}

function convert(node: unknown, key: string, where: string, depth: number): XmlElement {
  if (depth > MAX_DEPTH) throw new XmlParseError(where, `elements nested deeper than ${MAX_DEPTH} levels`);
  const name = stripPrefix(key, where);
  // xml2js collapses an element that has only whitespace and no attributes to a string.
  if (!isRecord(node)) return Object.freeze({ name, attrs: Object.freeze(Object.create(null) as Record<string, string>), children: Object.freeze([]), text: typeof node === 'string' ? node : '' });
  const attrs = Object.create(null) as Record<string, string>;
  const rawAttrs = node['$'];
  if (isRecord(rawAttrs)) {
    for (const [k, v] of Object.entries(rawAttrs)) {
      if (typeof v === 'string') attrs[k] = v;
    }
  }
  const children: XmlElement[] = [];
  let text = '';
  const ordered = node['$$'];
  if (Array.isArray(ordered)) {
    for (const child of ordered as unknown[]) {
      if (!isRecord(child)) continue;
      const childName = child['#name'];
      if (childName === '__text__') {
        const t = child['_'];
        if (typeof t === 'string') text += t;
      } else if (typeof childName === 'string') {
        children.push(convert(child, childName, where, depth + 1));
      }
    }
  }
  return Object.freeze({ name, attrs: Object.freeze(attrs), children: Object.freeze(children), text });
}

function stripPrefix(key: string, where: string): string {
  if (!key.startsWith(TAG_PREFIX)) throw new XmlParseError(where, `unexpected parser output for <${key}>`);
  return key.slice(TAG_PREFIX.length);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function firstLine(message: string): string {
  return message.split('\n').filter((l) => l.trim() !== '').join('; ');
}
