/**
 * spawnSync, loading child_process on first use. child_process (with net
 * and stream under it) costs about 2 ms to load, on every plugin start, and
 * most calls never spawn anything: only an nft transaction or a delegated
 * IPAM plugin does.
 */
import type * as ChildProcess from 'node:child_process';

export function spawnSync(
  command: string,
  args: readonly string[],
  options: ChildProcess.SpawnSyncOptionsWithStringEncoding,
): ChildProcess.SpawnSyncReturns<string> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return (require('node:child_process') as typeof ChildProcess).spawnSync(command, args, options);
}
