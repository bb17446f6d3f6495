"""Markdown before / after table of two gpu_compile JSON files (sm_90 rows): per kernel the counts of builds with
C7515, spills and wgmma N < 32, then every config per variant. Usage: before_after_table.py BEFORE.json AFTER.json"""
import json, re, sys, collections
b = json.load(open(sys.argv[1])); a = json.load(open(sys.argv[2]))
a = [r for r in a if r["arch"] == 90]
def parse(name):
    fn, tag = name.split("[", 1); parts = tag.rstrip("]").split(",")
    tile = next((p for p in parts if re.fullmatch(r"\d+x\d+(x\d+)?", p)), "")
    rest = [p for p in parts if p != tile and not re.fullmatch(r"[ws]\d+", p) and p not in ("tma", "sm90-only")]
    return fn, ",".join(rest), tile
def cfg(r):
    fn, var, tile = parse(r["kernel"]); w = f"w{r['num_warps']}"
    return f"{tile} {w}"
def narrow(r):
    return r.get("uses_wgmma") and r.get("min_wgmma_n") is not None and r["min_wgmma_n"] < 32
out = []
out.append("| kernel | builds | C7515 before -> after | spills before -> after | wgmma N < 32 before -> after |")
out.append("|---|---|---|---|---|")
fns = list(dict.fromkeys(parse(r["kernel"])[0] for r in b + a))
for fn in fns:
    rb = [r for r in b if parse(r["kernel"])[0] == fn]; ra = [r for r in a if parse(r["kernel"])[0] == fn]
    c = lambda rs, f: sum(1 for r in rs if f(r))
    out.append(f"| `{fn}` | {len(rb)} -> {len(ra)} | {c(rb, lambda r: 'C7515' in (r.get('perf_notes') or []))} -> "
               f"{c(ra, lambda r: 'C7515' in (r.get('perf_notes') or []))} | {c(rb, lambda r: r['local'] or r['stack'])} -> "
               f"{c(ra, lambda r: r['local'] or r['stack'])} | {c(rb, narrow)} -> {c(ra, narrow)} |")
out.append("")
out.append("Per variant, every config (sm_90): `tile warps: registers, hot loop instructions / MMAs, smallest wgmma N, "
           "loads, notes`.")
out.append("")
out.append("| kernel | variant | before (acc238f) | after |")
out.append("|---|---|---|---|")
def fmt(r):
    n = r.get("min_wgmma_n"); notes = ",".join(r.get("perf_notes") or []) or "-"
    loads = r.get("loads", "?")
    sp = f", **spill {r['local'] or r['stack']} B**" if (r["local"] or r["stack"]) else ""
    return (f"{cfg(r)}: {r['registers']} r, {r.get('hot_loop_instructions')}/{r.get('hot_loop_mma')}, "
            f"N{n if n else '-'}, {loads}, {'**' + notes + '**' if notes != '-' else notes}{sp}")
groups = collections.OrderedDict()
for which, rs in (("b", b), ("a", a)):
    for r in rs:
        fn, var, _ = parse(r["kernel"]); groups.setdefault((fn, var), {"b": [], "a": []})[which].append(r)
for (fn, var), d in groups.items():
    out.append(f"| `{fn}` | {var} | {'<br>'.join(fmt(r) for r in d['b']) or '-'} | {'<br>'.join(fmt(r) for r in d['a']) or '-'} |")
print("\n".join(out))
