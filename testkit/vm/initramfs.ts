/**
 * The VM's initramfs: static busybox, the few modules needed to mount the
 * host's root over virtio 9p, a modprobe shim, and an init script that runs
 * the guest runner once and powers off.
 *
 * Everything else (node, iproute2, the repository, the rest of the modules)
 * comes from the host's / shared read-only, so the image stays small (about
 * 1.5 MB) and is rebuilt only when one of its inputs changes: it is cached in
 * .vm/ under a hash of its contents.
 *
 * The cpio archive is written here (newc format, the kernel's) rather than
 * with cpio(1): the format is a few lines, the output is deterministic, and
 * one host tool fewer is needed.
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';

/**
 * Modules the init script loads before it can mount the host's root: the
 * virtio PCI transport, 9p over virtio, and the 9p file system. Their
 * dependencies are added from modules.dep, in load order.
 */
export const BOOT_MODULES = ['virtio_pci', '9pnet_virtio', '9p'];

/** Bumped when the layout of the image changes in a way the hash cannot see. */
const FORMAT = 'vm-initramfs-1';

export interface Kernel {
  version: string;
  image: string;
  modulesDir: string;
}

/**
 * The newest Debian kernel (vmlinuz-*-amd64) with its modules installed, or
 * the one named. The host's running kernel is of no use: it lacks the very
 * features the VM exists for.
 */
export function findKernel(version?: string): Kernel {
  const candidates = version
    ? [version]
    : fs
        .readdirSync('/boot')
        .filter((f) => /^vmlinuz-.*-amd64$/.test(f))
        .map((f) => f.slice('vmlinuz-'.length))
        .sort(compareVersions)
        .reverse();
  for (const v of candidates) {
    const image = `/boot/vmlinuz-${v}`;
    const modulesDir = `/lib/modules/${v}`;
    if (fs.existsSync(image) && fs.existsSync(path.join(modulesDir, 'modules.dep'))) return { version: v, image, modulesDir };
  }
  throw new Error(
    `no Debian kernel with modules found (${version ?? '/boot/vmlinuz-*-amd64'}): install linux-image-amd64`,
  );
}

function compareVersions(a: string, b: string): number {
  const pa = a.split(/[.-]/).map((x) => Number(x));
  const pb = b.split(/[.-]/).map((x) => Number(x));
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] || 0) - (pb[i] || 0);
    if (d !== 0 && !Number.isNaN(d)) return d;
  }
  return a.localeCompare(b);
}

/**
 * The modules to insmod, dependencies first, from modules.dep. modules.dep
 * lists each module's full dependency closure in the order modprobe unloads
 * it, so loading walks it backwards. Built-in modules are skipped.
 */
export function moduleLoadOrder(modulesDir: string, wanted: string[] = BOOT_MODULES): string[] {
  const deps = new Map<string, string[]>();
  for (const line of fs.readFileSync(path.join(modulesDir, 'modules.dep'), 'utf8').split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const rest = line.slice(colon + 1).trim();
    deps.set(line.slice(0, colon), rest ? rest.split(/\s+/) : []);
  }
  const builtin = new Set(
    fs
      .readFileSync(path.join(modulesDir, 'modules.builtin'), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map(moduleName),
  );
  const byName = new Map<string, string>();
  for (const file of deps.keys()) byName.set(moduleName(file), file);

  const order: string[] = [];
  const visit = (file: string): void => {
    if (order.includes(file)) return;
    for (const dep of [...(deps.get(file) ?? [])].reverse()) visit(dep);
    order.push(file);
  };
  for (const name of wanted) {
    if (builtin.has(name)) continue;
    const file = byName.get(name);
    if (!file) throw new Error(`module ${name} is neither built into ${modulesDir} nor listed in its modules.dep`);
    visit(file);
  }
  return order.map((f) => path.join(modulesDir, f));
}

/** kernel/fs/9p/9p.ko.xz -> 9p */
function moduleName(file: string): string {
  return path.basename(file).replace(/\.ko(\.(xz|zst|gz))?$/, '');
}

/**
 * A module's bytes, decompressed: busybox's insmod reads plain ELF only.
 * Debian 12 ships plain .ko files; later releases compress them.
 */
function readModule(file: string): Buffer {
  if (file.endsWith('.ko')) return fs.readFileSync(file);
  if (file.endsWith('.ko.gz')) return zlib.gunzipSync(fs.readFileSync(file));
  const tool = file.endsWith('.ko.xz') ? ['xz', '-dc'] : file.endsWith('.ko.zst') ? ['zstd', '-dc'] : undefined;
  if (!tool) throw new Error(`unknown module format: ${file}`);
  return execFileSync(tool[0], [...tool.slice(1), file], { maxBuffer: 64 << 20 });
}

/**
 * PID 1. Parameters come on the kernel command line (vm.run, vm.node,
 * vm.repo) so the cached image serves every run.
 *
 * The view node gets: the host's / read-only, with fresh tmpfs where programs
 * write (/tmp, /run and so /var/run/netns, /var/tmp, /var/lib, /var/log), the
 * guest's own proc, sys and dev, and the run directory writable (a second 9p
 * share mounted over the same path, so paths are the same inside and out).
 */
export const INIT_SCRIPT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

OUT=
say() { echo "@@vm $*"; }
fail() {
  say "init-error $*"
  [ -n "$OUT" ] && echo "{\\"t\\":\\"init-error\\",\\"message\\":\\"$*\\"}" >> "$OUT"
  sync
  reboot -f
}

for a in $(cat /proc/cmdline); do
  case "$a" in
    vm.run=*) RUN="\${a#vm.run=}" ;;
    vm.node=*) NODE="\${a#vm.node=}" ;;
    vm.repo=*) REPO="\${a#vm.repo=}" ;;
  esac
done
[ -n "$RUN" ] && [ -n "$NODE" ] && [ -n "$REPO" ] || fail "vm.run, vm.node and vm.repo must be on the kernel command line"

for m in /modules/*.ko; do insmod "$m" || fail "insmod $m"; done

mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host || fail "mount hostroot"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 vmout "/host$RUN" || fail "mount vmout on $RUN"
OUT="/host$RUN/results.jsonl"

mount -t proc proc /host/proc || fail "mount /proc"
mount -t sysfs sysfs /host/sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /host/dev || fail "mount /dev"
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
# The repository (and the run directory inside it) may itself live under one
# of the directories that get a fresh tmpfs below (a CI clone in /tmp): keep
# a handle on both and put them back where they were.
mkdir -p /keep/repo /keep/run
mount -o bind "/host$REPO" /keep/repo || fail "bind $REPO"
mount -o bind "/host$RUN" /keep/run || fail "bind $RUN"
for d in /tmp:1777 /var/tmp:1777 /run:755 /var/lib:755 /var/log:755; do
  dir="\${d%%:*}"
  [ -d "/host$dir" ] && [ ! -L "/host$dir" ] && { mount -t tmpfs -o "mode=\${d#*:}" tmpfs "/host$dir" || fail "mount tmpfs on $dir"; }
done
if [ ! -e "/host$REPO/package.json" ]; then
  mkdir -p "/host$REPO" && mount -o bind /keep/repo "/host$REPO" || fail "rebind $REPO"
  mount -o bind /keep/run "/host$RUN" || fail "rebind $RUN"
fi
mkdir -p /host/run/netns /host/run/lock

# The kernel autoloads modules (ipvlan, 8021q, xfrm_user, crypto templates)
# by running this path in the initramfs; the shim runs the host's modprobe.
echo /sbin/modprobe > /proc/sys/kernel/modprobe
ip link set lo up
hostname vm

read up rest < /proc/uptime
echo "{\\"t\\":\\"init\\",\\"uptime\\":$up}" >> "$OUT"
say "init uptime=$up"

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp TERM=dumb
chroot /host "$NODE" "$RUN/guest.js" --run "$RUN/results.jsonl" --repo "$REPO"
code=$?

read up rest < /proc/uptime
echo "{\\"t\\":\\"exit\\",\\"code\\":$code,\\"uptime\\":$up}" >> "$OUT"
say "exit code=$code uptime=$up"
sync
# qemu runs with -no-reboot: a reset ends it, more surely than ACPI power-off.
reboot -f
`;

export const MODPROBE_SHIM = `#!/bin/busybox sh
exec /bin/busybox chroot /host /sbin/modprobe "$@"
`;

interface Entry {
  name: string;
  mode: number;
  data?: Buffer;
  rdev?: [number, number];
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFCHR = 0o020000;

/** The cpio entries of the image. */
export function initramfsEntries(kernel: Kernel, busybox = findBusybox()): Entry[] {
  const entries: Entry[] = [];
  for (const dir of ['bin', 'sbin', 'dev', 'proc', 'sys', 'host', 'modules', 'tmp']) {
    entries.push({ name: dir, mode: S_IFDIR | 0o755 });
  }
  entries.push({ name: 'dev/console', mode: S_IFCHR | 0o600, rdev: [5, 1] });
  entries.push({ name: 'bin/busybox', mode: S_IFREG | 0o755, data: fs.readFileSync(busybox) });
  entries.push({ name: 'init', mode: S_IFREG | 0o755, data: Buffer.from(INIT_SCRIPT) });
  entries.push({ name: 'sbin/modprobe', mode: S_IFREG | 0o755, data: Buffer.from(MODPROBE_SHIM) });
  moduleLoadOrder(kernel.modulesDir).forEach((file, i) => {
    // The numeric prefix keeps the init script's glob in load order.
    const name = `modules/${String(i).padStart(2, '0')}-${moduleName(file)}.ko`;
    entries.push({ name, mode: S_IFREG | 0o644, data: readModule(file) });
  });
  return entries;
}

export function findBusybox(): string {
  for (const candidate of ['/bin/busybox', '/usr/bin/busybox']) {
    if (fs.existsSync(candidate)) {
      // A dynamically linked busybox would need the host's libc in the image.
      const head = fs.readFileSync(candidate).subarray(0, 4096).toString('latin1');
      if (!head.includes('/lib64/ld-linux') && !head.includes('/lib/ld-linux')) return candidate;
    }
  }
  throw new Error('a static busybox is needed for the VM initramfs: install busybox-static');
}

/** newc cpio (the format the kernel unpacks), ending with the trailer. */
export function cpioNewc(entries: Entry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const pad = (n: number): Buffer => Buffer.alloc((4 - (n % 4)) % 4);
  const push = (e: Entry): void => {
    const data = e.data ?? Buffer.alloc(0);
    const name = Buffer.from(e.name + '\0');
    const fields = [
      ino++,
      e.mode,
      0, // uid
      0, // gid
      (e.mode & S_IFDIR) === S_IFDIR ? 2 : 1,
      0, // mtime: 0 keeps the image byte-for-byte reproducible
      data.length,
      0, // devmajor
      0, // devminor
      e.rdev?.[0] ?? 0,
      e.rdev?.[1] ?? 0,
      name.length,
      0, // check
    ];
    const header = Buffer.from('070701' + fields.map((f) => f.toString(16).padStart(8, '0')).join(''), 'ascii');
    parts.push(header, name, pad(header.length + name.length), data, pad(data.length));
  };
  entries.forEach(push);
  push({ name: 'TRAILER!!!', mode: 0 });
  return Buffer.concat(parts);
}

/**
 * Builds the image into cacheDir unless an image with the same inputs is
 * there already; returns its path. Written to a temporary name and renamed,
 * so concurrent runs never see half an image.
 */
export function buildInitramfs(kernel: Kernel, cacheDir: string): string {
  const entries = initramfsEntries(kernel);
  const hash = createHash('sha256').update(FORMAT).update(kernel.version);
  for (const e of entries) {
    hash.update(`${e.name}\0${e.mode}\0${e.rdev?.join(':') ?? ''}\0`);
    if (e.data) hash.update(e.data);
  }
  const file = path.join(cacheDir, `initramfs-${kernel.version}-${hash.digest('hex').slice(0, 16)}.cpio.gz`);
  if (fs.existsSync(file)) return file;
  fs.mkdirSync(cacheDir, { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, zlib.gzipSync(cpioNewc(entries), { level: 6 }));
  fs.renameSync(tmp, file);
  // Images of older inputs are dead weight; one a few minutes old may still
  // be about to boot in a concurrent run, so only older ones go.
  for (const f of fs.readdirSync(cacheDir)) {
    const p = path.join(cacheDir, f);
    if (/^initramfs-.*\.cpio\.gz$/.test(f) && p !== file && Date.now() - fs.statSync(p).mtimeMs > 10 * 60_000) {
      fs.rmSync(p, { force: true });
    }
  }
  return file;
}
