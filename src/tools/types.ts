/** Shapes shared by the toolbox loader, the validators and the authorizer. */

/** An XML element in document order (xml2js order-preserving output, simplified). */
export interface XmlElement {
  readonly name: string;
  readonly attrs: Readonly<Record<string, string>>;
  /** Child elements in document order (text nodes are not elements). */
  readonly children: readonly XmlElement[];
  /** The element's own text (its direct text nodes concatenated, untrimmed). */
  readonly text: string;
}

export type ValidationResult = { readonly ok: true } | { readonly ok: false; readonly reason: string };

/** A compiled `<command_validator>` or `<configfile_validator>`. */
export interface Validator {
  /**
   * Judge `text` (a command line, or a config file's contents) for a job whose directory is
   * `jobDirectory` (absolute, no trailing slash). Never throws; linear in `text`.
   */
  validate(text: string, jobDirectory: string): ValidationResult;
}

export interface ToolDefinition {
  /** The tool's id (a tool-shed tool's id is its guid). */
  readonly id: string;
  readonly version: string;
  /** Absolute path of the tool XML. */
  readonly toolFile: string;
  /** Absolute, real path of the directory holding the tool XML (its tool files). */
  readonly toolDirectory: string;
  /** The toolbox file that declared it. */
  readonly toolbox: string;
  readonly commandValidator: Validator | undefined;
  readonly configfileValidators: ReadonlyMap<string, Validator>;
  /** `<env name="X"/>` in `<validators>`: env entry names this tool's jobs may carry (public mode). */
  readonly allowedEnv: ReadonlySet<string>;
}
