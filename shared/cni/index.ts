/** The CNI protocol core: what plugins import. */
export { ErrorCode, CniError, toCniError, unsupportedField, invalidEnv } from './errors';
export type { CniErrorJson, WellKnownCode } from './errors';
export { SUPPORTED_VERSIONS, LATEST, compareVersions, versionAtLeast, requireSupported } from './version';
export type { Result, Interface, IPConfig, Route, DNS, Attachment } from './types';
export { formatResult, parsePrevResult } from './result';
export { netConfBase, parseConfig, validateConfig, decodeJsonObject } from './config';
export type { NetConf } from './config';
export { readEnv, parseCniArgs, splitCniArgs, validateContainerId, validateIfname, ENV_RULES, NAME_PATTERN } from './env';
export type { CniEnv, Command, EnvRules } from './env';
export { runPlugin, requirePrevResult } from './skel';
export type { CniContext, Plugin, PluginCommand, SkelIO, NetnsStatus } from './skel';
