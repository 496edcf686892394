/**
 * cni-conformance: the CNI conformance suite's command line (HELP below).
 * Bundled by build.sh into dist/conformance.js; `npm run conformance -- ...`.
 */
import * as fs from 'node:fs';
import { stderrLog } from '../shared/log';
import { expandConfigPaths } from './config';
import { ConfigError } from './libcni';
import { formatLine, formatSummary, formatTable } from './report';
import { RULES } from './rules';
import { checkPrerequisites, runSuite } from './runner';

const HELP = `cni-conformance: run the CNI conformance suite against a directory of plugins.

  npm run conformance -- --plugins /usr/lib/cni --config conformance/configs
  node dist/conformance.js --plugins bin --config examples/none.conflist --rules del.,leaks.

Options (environment variables in brackets):
  --plugins DIR[:DIR...]   plugin directories, searched in order   [CONFORMANCE_PLUGINS]
  --config FILE|DIR        a .conflist/.conf or suite descriptor (.json), or a
                           directory of them; repeatable           [CONFORMANCE_CONFIGS, ':'-separated]
  --expect FILE            extra known-deviation file; repeatable   [CONFORMANCE_EXPECT]
  --rules PREFIX[,...]     only rules whose id starts with a prefix [CONFORMANCE_RULES]
  --json FILE              also write the report as JSON
  --list-rules             print the rules and exit

Exit status: 0 when no rule failed (known deviations are not failures),
1 when one did, 2 for a usage or configuration error.
`;

interface Args {
  plugins: string[];
  configs: string[];
  expect: string[];
  rules: string[];
  json?: string;
  listRules: boolean;
}

function usage(msg: string): never {
  stderrLog(`cni-conformance: ${msg}\nusage: cni-conformance --plugins DIR --config FILE [--config FILE...] [--expect FILE] [--rules PREFIX,...] [--json FILE]`);
  process.exit(2);
}

export function parseArgs(argv: readonly string[], env: NodeJS.ProcessEnv): Args {
  const args: Args = { plugins: [], configs: [], expect: [], rules: [], listRules: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const [flag, inline] = a.startsWith('--') && a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = (): string => {
      const v = inline ?? argv[++i];
      if (v === undefined) usage(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--plugins':
        args.plugins.push(...value().split(':').filter(Boolean));
        break;
      case '--config':
        args.configs.push(value());
        break;
      case '--expect':
        args.expect.push(value());
        break;
      case '--rules':
        args.rules.push(...value().split(',').filter(Boolean));
        break;
      case '--json':
        args.json = value();
        break;
      case '--list-rules':
        args.listRules = true;
        break;
      case '-h':
      case '--help':
        process.stdout.write(HELP);
        process.exit(0);
        break;
      default:
        usage(`unknown argument ${a}`);
    }
  }
  if (args.plugins.length === 0 && env.CONFORMANCE_PLUGINS) args.plugins = env.CONFORMANCE_PLUGINS.split(':').filter(Boolean);
  if (args.configs.length === 0 && env.CONFORMANCE_CONFIGS) args.configs = env.CONFORMANCE_CONFIGS.split(':').filter(Boolean);
  if (args.expect.length === 0 && env.CONFORMANCE_EXPECT) args.expect = env.CONFORMANCE_EXPECT.split(':').filter(Boolean);
  if (args.rules.length === 0 && env.CONFORMANCE_RULES) args.rules = env.CONFORMANCE_RULES.split(',').filter(Boolean);
  return args;
}

function main(): void {
  const args = parseArgs(process.argv.slice(2), process.env);
  if (args.listRules) {
    for (const r of RULES) process.stdout.write(`${r.id.padEnd(28)} ${r.title}\n`);
    return;
  }
  if (args.plugins.length === 0) usage('no plugin directory: --plugins DIR or CONFORMANCE_PLUGINS');
  if (args.configs.length === 0) usage('no network config: --config FILE or CONFORMANCE_CONFIGS');
  const missing = checkPrerequisites();
  if (missing.length) usage(`missing prerequisites: ${missing.join(', ')}`);
  try {
    const files = expandConfigPaths(args.configs);
    if (files.length === 0) usage(`no *.json, *.conf or *.conflist in ${args.configs.join(', ')}`);
    const report = runSuite({
      pluginDirs: args.plugins,
      configs: files.map((file) => ({ file })),
      expectations: args.expect,
      rules: args.rules,
      onResult: (r) => process.stdout.write(`${formatLine(r)}\n`),
    });
    process.stdout.write(`\n${formatTable(report)}\n\n${formatSummary(report)}\n`);
    if (args.json) fs.writeFileSync(args.json, JSON.stringify({ ...report, calls: undefined }, null, 2));
    process.exitCode = report.failed ? 1 : 0;
  } catch (e) {
    if (e instanceof ConfigError || (e as NodeJS.ErrnoException).code === 'ENOENT') usage((e as Error).message);
    throw e;
  }
}

if (require.main === module) main();
