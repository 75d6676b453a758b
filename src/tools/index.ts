export type { Authorizer, SubmitFacts, UploadDecision } from './authorizer.js';
export { AllowAnyAuthorizer, ToolboxAuthorizer } from './authorizer.js';
export { createAuthorizer } from './create-authorizer.js';
export type { ToolDefinition, Validator, ValidationResult, XmlElement } from './types.js';
