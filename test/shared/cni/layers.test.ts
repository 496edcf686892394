/**
 * The layering the code relies on, checked from the import statements
 * themselves (TypeScript's own pre-parser, so `require()` counts too):
 * the CNI core loads no kernel code, shared/ folders do not load each
 * other in a cycle, and the conformance suite's files have no cycle at
 * all, not even through `import type`. For the first two, `import type`
 * and `export type` are left out: they are erased and load nothing.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(__dirname, '../../..');

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
    const rel = path.join(dir, e.name);
    if (e.isDirectory()) {
      if (e.name !== 'build' && e.name !== 'node_modules') out.push(...sourceFiles(rel));
    } else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) {
      out.push(rel);
    }
  }
  return out;
}

/** Repo-relative .ts files that file imports (relative specifiers only); only what it loads at run time unless withTypes. */
function importsOf(file: string, withTypes = false): string[] {
  let text = fs.readFileSync(path.join(ROOT, file), 'utf8');
  if (!withTypes) text = text.replace(/^\s*(import|export)\s+type\s[^;]*;/gm, '');
  const info = ts.preProcessFile(text, true, true);
  const out: string[] = [];
  for (const ref of info.importedFiles) {
    if (!ref.fileName.startsWith('.')) continue;
    const base = path.join(path.dirname(file), ref.fileName);
    const hit = [`${base}.ts`, path.join(base, 'index.ts'), base].find((c) => c.endsWith('.ts') && fs.existsSync(path.join(ROOT, c)));
    if (hit) out.push(hit);
  }
  return out;
}

/** Every cycle's members in a directed graph (strongly connected components of more than one node). */
function cycles(graph: Map<string, Set<string>>): string[][] {
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) {
        low.set(v, Math.min(low.get(v)!, index.get(w)!));
      }
    }
    if (low.get(v) === index.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1) found.push(scc.sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return found;
}

function addEdge(graph: Map<string, Set<string>>, from: string, to: string): void {
  if (!graph.has(from)) graph.set(from, new Set());
  if (!graph.has(to)) graph.set(to, new Set());
  if (from !== to) graph.get(from)!.add(to);
}

/** shared/netlink/x.ts -> shared/netlink; shared/log.ts -> shared/log.ts */
const folderOf = (file: string) => file.split(path.sep).slice(0, 2).join('/').replace(/\.ts$/, '');

describe('layers', () => {
  it('the CNI protocol core (shared/cni/skel.ts) imports nothing from netlink, netns or the system layer', () => {
    const reached = new Set<string>();
    const walk = (f: string): void => {
      if (reached.has(f)) return;
      reached.add(f);
      importsOf(f).forEach(walk);
    };
    walk('shared/cni/skel.ts');
    expect([...reached].filter((f) => /^shared\/(netlink|netns|sys)\//.test(f))).toEqual([]);
  });

  it('has no cycle between the folders of shared/', () => {
    const graph = new Map<string, Set<string>>();
    for (const f of sourceFiles('shared')) {
      for (const to of importsOf(f)) if (to.startsWith('shared/')) addEdge(graph, folderOf(f), folderOf(to));
    }
    expect(graph.has('shared/sys')).toBe(true);
    expect(cycles(graph)).toEqual([]);
  });

  it('has no import cycle between the files of conformance/, type imports included', () => {
    const graph = new Map<string, Set<string>>();
    for (const f of sourceFiles('conformance')) {
      for (const to of importsOf(f, true)) if (to.startsWith('conformance/')) addEdge(graph, f, to);
    }
    expect(graph.size).toBeGreaterThan(5);
    expect(cycles(graph)).toEqual([]);
  });

  it('finds a cycle when there is one (the checker itself)', () => {
    const graph = new Map<string, Set<string>>();
    addEdge(graph, 'a', 'b');
    addEdge(graph, 'b', 'c');
    addEdge(graph, 'c', 'a');
    addEdge(graph, 'c', 'd');
    expect(cycles(graph)).toEqual([['a', 'b', 'c']]);
  });
});
