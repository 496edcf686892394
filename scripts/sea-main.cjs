// The packaged executable's main script (scripts/pack-sea.cjs): runs the
// bundle dist/cni-ts.js, which travels as the SEA asset "cni-ts.js", through
// a V8 code cache made by an earlier run of the same call.
//
// Why: SEA's own code cache (useCodeCache) is made at build time from a
// compile that runs nothing, so it holds the bundle's top level only; every
// function a plugin call runs is still parsed and compiled at each start
// (about a quarter of a standalone bridge ADD's instructions). A cache taken
// after a run (script.createCachedData()) holds the functions that run
// compiled. One cache per executable name and CNI_COMMAND (or tool), since
// each call runs different code; the first such call after a boot or an
// upgrade writes it, the next ones read it.
//
// Where: /run/cni-ts, root's 0700 directory where the native binding is
// written too. A code cache is code, so nothing but a root-only file in a
// root-only directory is read; the path comes from no environment variable;
// the bundle's digest is in the name, so an upgrade never reads an older
// cache. V8 itself rejects a cache made by another V8, other flags or
// another source (cachedDataRejected), and then a new one is written.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const sea = require('node:sea');
const vm = require('node:vm');

const DIR = '/run/cni-ts';

function word(s, fallback) {
  return typeof s === 'string' && /^[A-Za-z][A-Za-z-]{0,31}$/.test(s) ? s : fallback;
}

/** A regular file or directory owned by this (root) user that no one else may write. */
function ours(st, dir) {
  return st.uid === process.geteuid() && (st.mode & 0o022) === 0 && (dir ? st.isDirectory() : st.isFile());
}

function readCache(file) {
  try {
    if (!ours(fs.lstatSync(DIR), true)) return undefined;
    const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    try {
      return ours(fs.fstatSync(fd), false) ? fs.readFileSync(fd) : undefined;
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return undefined; // not written yet, or not one we trust
  }
}

function writeCache(file, data) {
  try {
    fs.mkdirSync(DIR, { recursive: true, mode: 0o700 });
    if (!ours(fs.lstatSync(DIR), true)) return;
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, data, { mode: 0o600, flag: 'wx' });
    fs.renameSync(tmp, file);
  } catch {
    // a read-only /run or a full disk costs speed only
  }
}

const digest = sea.getAsset('cni-ts.js.sha256', 'utf8').trim().slice(0, 16);
const name = path.basename(process.execPath);
// `cni-ts bridge` runs a plugin as `bridge` does; `cni-ts daemon` a tool
const what = `${name === 'cni-ts' ? `${word(process.argv[2], 'none')}-` : ''}${word(process.env.CNI_COMMAND, 'none')}`;
const file = path.join(DIR, `v8-${digest}-${word(name, 'cni-ts')}-${what}.cache`);
const cachedData = readCache(file);
// the CommonJS wrapper Node itself puts around a module
const script = new vm.Script(`(function (exports, require, module, __filename, __dirname) {${sea.getAsset('cni-ts.js', 'utf8')}\n})`, {
  filename: 'cni-ts.js',
  cachedData,
});
if (cachedData === undefined || script.cachedDataRejected) {
  // after the call, so the cache holds what it compiled; once per boot, upgrade and call kind
  process.once('exit', () => writeCache(file, script.createCachedData()));
}
script.runInThisContext()(module.exports, require, module, __filename, __dirname);
