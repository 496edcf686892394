/**
 * `bash test/vm/run.sh [guest files...]`: boots the VM once and runs the
 * given guest files (default test/vm/guest/*.guest.ts), printing the console
 * as it goes and a summary at the end. Exits non-zero if any test failed or
 * the run itself went wrong.
 *
 * Flags: --keep keeps .vm/runs/<id>/ (bundle, results.jsonl, console.log);
 *        --quiet prints only results and the summary;
 *        --timeout <seconds> for the whole run (default 600).
 */
import * as path from 'node:path';
import { bootVm, defaultGuestFiles, formatTimings, prepareRun } from '../../testkit/vm/harness';

async function cli(argv: string[]): Promise<number> {
  const files: string[] = [];
  let keep = false;
  let quiet = false;
  let timeoutMs = 600_000;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--keep') keep = true;
    else if (a === '--quiet') quiet = true;
    else if (a === '--timeout') timeoutMs = Number(argv[++i]) * 1000;
    else if (a.startsWith('-')) throw new Error(`unknown flag ${a}`);
    else files.push(a);
  }
  // Paths given on the command line are relative to where it was typed.
  const run = prepareRun(files.length ? files.map((f) => path.resolve(f)) : defaultGuestFiles());
  console.log(`vm: kernel ${run.kernel.version}, ${run.expected.length} tests in ${run.files.length} file(s), run dir ${run.runDir}`);
  const result = await bootVm(run, {
    timeoutMs,
    keepRunDir: keep,
    onConsole: (line) => {
      if (!quiet || line.startsWith('@@vm ')) console.log(`  | ${line}`);
    },
  });
  let passed = 0;
  let failed = 0;
  for (const o of result.outcomes) {
    if (o.status === 'pass') passed++;
    else failed++;
    console.log(`${o.status === 'pass' ? 'PASS' : 'FAIL'} ${o.file} > ${o.name}`);
    if (o.status === 'fail' && o.error) console.log(o.error.replace(/^/gm, '    '));
  }
  for (const p of result.problems) console.log(`PROBLEM ${p}`);
  console.log(`vm: ${formatTimings(result.timings)}; guest kernel ${result.guestKernel ?? '?'}`);
  if (result.problems.length || failed) console.log(`vm: run dir kept: ${result.runDir}`);
  console.log(`${passed} passed, ${failed} failed`);
  return failed === 0 && result.problems.length === 0 ? 0 : 1;
}

cli(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(2);
  },
);
