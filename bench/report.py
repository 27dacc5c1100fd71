"""The figures as Markdown: printed by `python -m bench` and written to bench/results.md."""

import os
from typing import Any

IMPORT_TARGET = 1.3
SWEEP_CPU_TARGET = 1.2  # the sweep's CPU per renewal, at most this times the bare loop's
SWEEP_BOUND_TARGET = 0.9  # the sweep's renewals per second, at least this times the bound
TOKEN_LATENCY_S = 0.05  # what the ServiceNow stand-in adds to each token call (bench/sweep.py)
NOISY_CORES = 0.2  # other users' cores during a sweep run above which the figure says so
LATENCY_TARGET = 2.0
PROXY_ADDED_TARGET_MS = 3.0
PROXY_THROUGHPUT_TARGET = 0.6
QUEUED_TARGET = 0.6
CALLS_PER_1000_TARGET = 3.0
IDLE_CALLS_TARGET = 1
IDLE_REQUESTS_TARGET = 2
LATENCY_P95_TARGET_S = 35.0


def _ok(met: bool) -> str:
    return "yes" if met else "**no**"


def _calls(calls: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(calls.items())) or "none"


def _ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def _ms2(value: float) -> str:
    return f"{value:.2f} ms"


def _limits(bound: dict[str, Any]) -> str:
    return ", ".join(f"{name} {rate:,.0f}/s" for name, rate in bound["limits"].items())


def _sweep_rows(sweep: dict[str, Any]) -> tuple[list[str], bool]:
    run, sample = sweep["concurrent"], sweep["sequential_sample"]
    n, concurrency = sweep["connections"], sweep["concurrency"]
    bound, bare_bound = sweep["sweep_bound"], sweep["bare_bound"]
    sweep_ms = bound["cpu_per_renewal_ms"]["bench"]
    bare_ms = bare_bound["cpu_per_renewal_ms"]["bench"]
    each = " / ".join(_ms2(r["cpu"]["bench"] * 1000 / r["worked"]) for r in sweep["bare_runs"])
    halves = " and ".join(f"{r['worked']:,}" for r in sweep["bare_runs"])
    cpu_met = sweep["cpu_ratio"] <= SWEEP_CPU_TARGET
    bound_met = bound["ratio"] >= SWEEP_BOUND_TARGET
    cpu = bound["cpu_per_renewal_ms"]
    rows = [
        f"| 1. sweep CPU per renewal | `run_sweep`, {n:,} due OAuth renewals (token call "
        f"+50 ms), concurrency {concurrency}: **{_ms2(sweep_ms)}** of the sweep process's CPU "
        f"per renewal | bare loop: the same calls through the same SDK clients, no product "
        f"logic, {concurrency} threads, {halves} renewals before and after the sweep: "
        f"{_ms2(bare_ms)} ({each}) | **{sweep['cpu_ratio']:.2f}x** the bare loop "
        f"| ≤ {SWEEP_CPU_TARGET}x | {_ok(cpu_met)} |",
        f"| 1. sweep throughput against the machine's bound | the same sweep: "
        f"**{bound['per_s']:.1f} renewals/s** ({n:,} in {run['seconds']:.1f} s) "
        f"| the bound from the CPU per renewal all processes spent in it (sweep "
        f"{_ms2(cpu['bench'])}, Azurite {_ms2(cpu['azurite'])}, stand-ins "
        f"{_ms2(cpu['stand-ins'])}): the least of {_limits(bound)}: "
        f"{bound['bound_per_s']:.1f}/s ({bound['binding']}) "
        f"| **{bound['ratio']:.2f}x** the bound | ≥ {SWEEP_BOUND_TARGET}x | {_ok(bound_met)} |",
        f"| 1. sweep against one after another (information) | the same sweep: "
        f"{run['seconds']:.1f} s ({n / run['seconds']:.0f}/s) "
        f"| one after another: {sweep['sequential_per_connection_s'] * 1000:.1f} ms each "
        f"(measured on {sample['worked']}, scaled: {sweep['sequential_estimate_s']:.0f} s) "
        f"| {sweep['speedup']:.1f}x faster; {sweep['over_floor']:.1f}x the latency floor "
        f"({n:,} x 50 ms ÷ {concurrency} = {sweep['floor_s']:.2f} s) "
        f"| information (the former ≥ 15x, not judgeable on {sweep['cores']} cores) | — |",
    ]
    return rows, cpu_met and bound_met


def _idle_row(idle: dict[str, Any]) -> tuple[str, bool]:
    run = idle["run"]
    due = idle["due"]
    vault = sum(run["vault"].values())
    read = idle["total_read"]
    met = run["worked"] == due and read <= 2 * due + 10 and vault <= due
    per = ", ".join(f"{table} {count}" for table, count in sorted(idle["entities_read"].items()))
    row = (
        f"| 2. sweep cost when little is due | {idle['connections']:,} connections, {due} due: "
        f"**{read} entities read** ({per}), {idle['total_requests']} table requests, "
        f"**{vault} Key Vault calls** ({_calls(run['vault'])}), {run['token_calls']} token calls "
        f"| per due connection: {read / due:.2f} entities read, {vault / due:.2f} Key Vault "
        f"calls; {idle['connections'] * 3:,} entities in storage "
        f"| proportional to the {due} due | proportional to what is due | {_ok(met)} |"
    )
    return row, met


def _import_row(cold: dict[str, Any]) -> tuple[str, bool]:
    met = cold["ratio"] <= IMPORT_TARGET
    row = (
        f"| 3. cold import | `import function_app`: **{cold['app_ms']:.0f} ms** "
        f"| `import azure.functions`: {cold['bare_ms']:.0f} ms "
        f"(medians of {cold['runs']} fresh interpreters, `-X importtime`) "
        f"| **{cold['ratio']:.2f}x** | ≤ {IMPORT_TARGET}x | {_ok(met)} |"
    )
    return row, met


def _latency_rows(latency: dict[str, Any]) -> tuple[list[str], bool]:
    summary = latency["summary"]
    rows, met = [], latency["vault_calls_during_read_and_list"] == 0
    for name, bare in (("read", "bare read"), ("list", "bare list")):
        ratio = summary[name]["p50"] / summary[bare]["p50"]
        ratio95 = summary[name]["p95"] / summary[bare]["p95"]
        inside = summary[f"{name} in app"]
        met = met and ratio <= LATENCY_TARGET
        verdict = _ok(ratio <= LATENCY_TARGET) + " at p50"
        if ratio95 > LATENCY_TARGET:
            verdict += f"; p95 {ratio95:.1f}x"
        what = f"{latency['listed']} connections" if name == "list" else "one connection"
        rows.append(
            f"| 4. API {name} ({what}) | p50 **{_ms(summary[name]['p50'])}**, "
            f"p95 {_ms(summary[name]['p95'])} over HTTP ({summary[name]['n']} calls); in the "
            f"runner, without the HTTP hop: p50 {_ms(inside['p50'])}, p95 {_ms(inside['p95'])} "
            f"| bare `azure-data-tables` {'query' if name == 'list' else 'get_entity'}: "
            f"p50 {_ms(summary[bare]['p50'])}, p95 {_ms(summary[bare]['p95'])} "
            f"| **{ratio:.2f}x** at p50, {ratio95:.2f}x at p95 "
            f"| ≤ {LATENCY_TARGET:.0f}x | {verdict} |"
        )
    vault = latency["vault_calls_during_read_and_list"]
    rows.append(
        f"| 4. Key Vault calls by read and list | **{vault}** | — | — | 0 | {_ok(vault == 0)} |"
    )
    others = ", ".join(
        f"{name} p50 {_ms(summary[name]['p50'])} / p95 {_ms(summary[name]['p95'])}"
        for name in ("create", "update", "delete")
    )
    rows.append(f"| 4. API create, update (rename), delete | {others} | — | — | printed | yes |")
    return rows, met


def _memory_row(sweep: dict[str, Any], heap: dict[str, Any]) -> tuple[str, bool]:
    big, small = sweep["concurrent"], sweep["memory_small"]
    rss = "peak RSS not resettable here"
    if big["peak_rss_kb"] is not None and small["peak_rss_kb"] is not None:
        big_mib = (big["peak_rss_kb"] - big["rss_before_kb"]) / 1024
        small_mib = (small["peak_rss_kb"] - small["rss_before_kb"]) / 1024
        rss = (
            f"peak RSS **{big['peak_rss_kb'] / 1024:.0f} MiB** (+{big_mib:.1f} MiB during the "
            f"sweep); sweep of {small['worked']:,}: +{small_mib:.1f} MiB"
        )
    first, last = heap["runs"][0], heap["runs"][-1]
    per_connection = heap["peak_per_connection_kb"]
    met = per_connection * 1024 <= heap["record_bytes"]
    row = (
        f"| 6. memory | sweep of {big['worked']:,}: {rss} "
        f"| Python heap at the sweep's peak (tracemalloc): +{first['peak_kb']:.0f} KB for "
        f"{first['worked']:,}, +{last['peak_kb']:.0f} KB for {last['worked']:,} "
        f"| **{per_connection:.2f} KB** per extra connection at the peak "
        f"({heap['kept_per_connection_kb']:.2f} KB kept after); one record, read, is "
        f"{heap['record_bytes'] / 1024:.2f} KB "
        f"({heap['stored_record_bytes'] / 1024:.2f} KB stored) "
        f"| less than a record per connection | {_ok(met)} |"
    )
    return row, met


def _proxy_rows(proxy: dict[str, Any]) -> tuple[list[str], bool]:
    direct, proxied, load = proxy["direct"], proxy["proxied"], proxy["throughput"]
    added, added95 = proxied["p50"] - direct["p50"], proxied["p95"] - direct["p95"]
    fast = added <= PROXY_ADDED_TARGET_MS
    enough = load["ratio"] >= PROXY_THROUGHPUT_TARGET
    vault = sum(proxy["vault"].values())
    rows = [
        f"| 7. proxy latency (one record) | proxied `GET .../servicenow/{proxy['record_path']}`: "
        f"p50 **{_ms(proxied['p50'])}**, p95 {_ms(proxied['p95'])} ({proxied['n']} calls) "
        f"| direct `requests` call to the stand-in, same record and API token, interleaved: "
        f"p50 {_ms(direct['p50'])}, p95 {_ms(direct['p95'])} "
        f"| **+{_ms(added)}** at p50, +{_ms(added95)} at p95 "
        f"| ≤ +{PROXY_ADDED_TARGET_MS:.0f} ms at p50 | {_ok(fast)} |",
        f"| 7. proxy throughput | {load['calls']:,} proxied calls at concurrency "
        f"{load['concurrency']}: **{load['proxied']['per_second']:.0f}/s** "
        f"| {load['calls']:,} direct calls at concurrency {load['concurrency']}: "
        f"{load['direct']['per_second']:.0f}/s "
        f"| **{load['ratio']:.2f}x** direct | ≥ {PROXY_THROUGHPUT_TARGET}x | {_ok(enough)} |",
        f"| 7. Key Vault calls per proxied call | **{proxy['vault_per_call']:.2f}** ({vault} in "
        f"{proxy['proxied_calls']:,} proxied calls on a warm worker) | — | — | 0 "
        f"| {_ok(vault == 0)} |",
    ]
    return rows, fast and enough and vault == 0


# The parts `python -m bench --only PART` runs: their figures (rows of the table, by number)
# and their sections (by title, former titles included) replace theirs in results.md.
PARTS = ("import", "api", "sweep", "triggers")
PART_FIGURES = {
    "import": ("3",),
    "api": ("4", "5", "7"),
    "sweep": ("1", "2", "6"),
    "triggers": ("8",),
}
PART_SECTIONS = {
    "import": (),
    "api": ("Key Vault calls per operation", "Proxy, in detail"),
    "sweep": (
        "Sweep CPU and throughput, in detail",
        "Sweep throughput, in detail",
        "Sweep cost when little is due, in detail",
    ),
    "triggers": ("Triggers, in detail",),
}
_RERUN = "Re-run alone later: figures "


def render(results: dict[str, Any]) -> str:
    """The whole report, of the parts `results` holds (all of them in a full run)."""
    parts = results.get("parts", PARTS)
    command = "scripts/bench" if parts == PARTS else _only(parts)
    lines = ["# Benchmark results", ""]
    lines += [f"Run with `{command}` in {results['seconds'] / 60:.1f} minutes.", ""]
    lines += ["| machine | |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in results["machine"].items()]
    lines += [
        "",
        "Storage is Azurite (in memory); Key Vault, its managed identity and ServiceNow are the "
        "local stand-ins, served from a process of their own with connections kept alive. "
        "Every comparison is between two measurements of the same run.",
    ]
    lines += ["", "## Figures", ""]
    lines += ["| figure | measured | compared with (same run) | result | target | met |"]
    lines += ["| --- | --- | --- | --- | --- | --- |"]
    if "sweep" in parts:
        lines += _sweep_rows(results["sweep"])[0]
        lines.append(_idle_row(results["idle"])[0])
    if "import" in parts:
        lines.append(_import_row(results["cold_import"])[0])
    if "api" in parts:
        lines += _latency_rows(results["latency"])[0]
        vault_ops = "; ".join(f"{row['operation']} {row['total']}" for row in results["vault"])
        lines.append(f"| 5. Key Vault calls | {vault_ops} | — | see below | printed | yes |")
    if "sweep" in parts:
        lines.append(_memory_row(results["sweep"], results["heap"])[0])
    if "api" in parts:
        lines += _proxy_rows(results["proxy"])[0]
    if "triggers" in parts:
        lines += _trigger_rows(results["triggers"])[0]
    if "sweep" in parts:
        lines += ["", *_sweep_detail(results["sweep"], results["idle"])]
        lines += ["", *_idle_detail(results["idle"])]
    if "api" in parts:
        lines += ["", *_vault_detail(results), "", *_proxy_detail(results["proxy"])]
    if "triggers" in parts:
        lines += ["", *_trigger_detail(results["triggers"])]
    return "\n".join(lines) + "\n"


def _only(parts: tuple[str, ...]) -> str:
    return "python -m bench " + " ".join(f"--only {part}" for part in parts)


def _split(text: str) -> tuple[list[str], list[str], list[list[str]]]:
    """A report's lines before its table (title, machine, notes), its table rows (header
    and rule left out) and its sections after the table, each from its `## ` title on."""
    lines = text.rstrip("\n").split("\n")
    at = lines.index("## Figures")
    head, rest = lines[: at + 1], lines[at + 1 :]
    rows = [line for line in rest if line.startswith("| ") and line[2:3].isdigit()]
    sections: list[list[str]] = []
    for line in rest:
        if line.startswith("## "):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
    for section in sections:
        while section and not section[-1]:
            section.pop()
    return head, rows, sections


def _figure(row: str) -> str:
    return row[2:].split(".", 1)[0]


def _section_part(section: list[str]) -> str | None:
    title = section[0][3:].strip()
    return next((part for part, titles in PART_SECTIONS.items() if title in titles), None)


def merge(previous: str, new: str, results: dict[str, Any]) -> str:
    """The previous report with the figures and sections of the parts just run replaced by
    theirs in `new`, and a note of when they were run; everything else kept as it was."""
    parts = results["parts"]
    figures = {figure for part in parts for figure in PART_FIGURES[part]}
    head, rows, sections = _split(previous)
    _, new_rows, new_sections = _split(new)
    rows = [row for row in rows if _figure(row) not in figures] + new_rows
    rows.sort(key=lambda row: int(_figure(row)))  # stable: each figure's rows keep their order
    merged: list[list[str]] = []
    placed: set[str] = set()
    for section in sections:
        part = _section_part(section)
        if part not in parts:
            merged.append(section)
        elif part not in placed:
            placed.add(part)
            merged += [s for s in new_sections if _section_part(s) == part]
    merged += [s for s in new_sections if _section_part(s) not in placed]
    machine = results["machine"]
    note = (
        f"{_RERUN}{', '.join(sorted(figures, key=int))} (`{_only(parts)}`, "
        f"{machine['date']}, {results['seconds'] / 60:.1f} minutes, load average "
        f"{machine['load average at start (1 / 5 / 15 min)']} at its start and "
        f"{machine['load average at end (1 / 5 / 15 min)']} at its end); the rest, and the "
        "machine above, are the full run's."
    )
    title_at = head.index("## Figures")
    kept = [line for line in head[:title_at] if not _replaced_note(line, figures)]
    while kept and not kept[-1]:
        kept.pop()
    lines = [*kept, "", note, "", "## Figures", ""]
    lines += ["| figure | measured | compared with (same run) | result | target | met |"]
    lines += ["| --- | --- | --- | --- | --- | --- |", *rows]
    for section in merged:
        lines += ["", *section]
    return "\n".join(lines) + "\n"


def _replaced_note(line: str, figures: set[str]) -> bool:
    """A note of an earlier re-run whose figures are all being re-run now."""
    if not line.startswith(_RERUN):
        return False
    listed = line[len(_RERUN) :].split(" (", 1)[0].split(", ")
    return set(listed) <= figures


def _run_row(name: str, run: dict[str, Any]) -> str:
    cpu = {key: seconds * 1000 / run["worked"] for key, seconds in run["cpu"].items()}
    return (
        f"| {name} | {run['worked']:,} | {run['seconds']:.1f} s | "
        f"{run['worked'] / run['seconds']:.1f} | {cpu['bench']:.2f} | {cpu['azurite']:.2f} | "
        f"{cpu['stand-ins']:.2f} | {sum(cpu.values()):.2f} | "
        f"{run['switches'] / run['worked']:.0f} | {run['others_cpu'] / run['seconds']:.2f} |"
    )


def _sweep_detail(sweep: dict[str, Any], idle: dict[str, Any] | None) -> list[str]:
    run, bare = sweep["concurrent"], sweep["bare"]
    n, concurrency, cores = sweep["connections"], sweep["concurrency"], sweep["cores"]
    bound, bare_bound = sweep["sweep_bound"], sweep["bare_bound"]
    sweep_ms = bound["cpu_per_renewal_ms"]["bench"]
    bare_ms = bare_bound["cpu_per_renewal_ms"]["bench"]
    memory, token = sweep["decomposition"]["in_memory"], sweep["decomposition"]["token_call"]
    hot = sweep["decomposition"]["hotspots"]
    logic = memory["sweep_ms"] - memory["bare_ms"]
    outbound = token["app_ms"] - token["bare_ms"]
    per_connection_ms = sweep["sequential_per_connection_s"] * 1000
    rest = sweep_ms - bare_ms - logic - outbound
    halves = [part["cpu"]["bench"] * 1000 / part["worked"] for part in sweep["bare_runs"]]
    spread = max(halves) - min(halves)
    one, one_bare = sweep["sequential_sample"], sweep["sequential_bare"]
    one_ms = one["cpu"]["bench"] * 1000 / one["worked"]
    one_bare_ms = one_bare["cpu"]["bench"] * 1000 / one_bare["worked"]
    left = cores - bound["others_cores"]
    left_bound = min(
        1000 / sweep_ms, left * 1000 / bound["total_ms"], concurrency / TOKEN_LATENCY_S
    )
    busiest = max([*sweep["bare_runs"], run], key=lambda part: part["others_cpu"] / part["seconds"])
    shared = busiest["others_cpu"] / busiest["seconds"]
    lines = [
        "## Sweep CPU and throughput, in detail",
        "",
        "How the processes are arranged: this process (`bench`) runs the sweep, or the bare "
        "loop, in its own threads and nothing else meanwhile; Azurite is a node process of its "
        "own; the identity, Key Vault and ServiceNow stand-ins run together in one Python "
        "process (`bench/standins.py`). CPU is user plus system time: the sweep process's from "
        "`time.process_time()` (every thread of it), the others' from `/proc/<pid>/stat` (all "
        "threads, children included). Before the runs, the bench process spent "
        f"{sweep['idle_cpu_ms_per_s']:.2f} ms of CPU per second idle, so what the runs measure "
        "in it is theirs. Its context switches (`getrusage`, voluntary and not: a thread "
        "giving way to wait for I/O, a lock or the GIL) show how much its threads handed the "
        "GIL around. Other users' CPU meanwhile is the machine's busy time "
        "(`/proc/stat`) less our three processes': this machine is shared, so it is shown "
        "for each run.",
        "",
        "| run (in order) | renewals | wall | renewals/s | sweep process, ms CPU per renewal "
        "| Azurite | stand-ins | all three | sweep process, context switches per renewal "
        "| other users' cores meanwhile |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        _run_row("bare loop, first half", sweep["bare_runs"][0]),
        _run_row("sweep", run),
        *[
            _run_row(f"bare loop, part {index}", part)
            for index, part in enumerate(sweep["bare_runs"][1:], 2)
        ],
        _run_row("bare loop, together", bare),
        _run_row("bare loop, one after another", sweep["sequential_bare"]),
        _run_row("sweep, one after another", sweep["sequential_sample"]),
        "",
        *(
            [
                f"Other users took up to {shared:.2f} of the {cores} cores during these runs: "
                "the runs' CPU per renewal varies with that (caches, switches), so the ratios "
                "below are looser than on an idle machine. The decomposition after them "
                "(in memory, or one call at a time, the least of alternating rounds) is less "
                "affected.",
                "",
            ]
            if shared >= NOISY_CORES
            else []
        ),
        f"- The bare loop (`bench/sweep.py`, `BareRenewals`): per due connection, through the "
        "app's own cached clients (`table_client()`, `table_client(DUE_TABLE)`, "
        "`secret_client()`: the same transports and pools), the record read (`get_entity`), "
        "the lease write (a merge of the two lease columns, on the ETag), the token call "
        "(client credentials, a prepared `requests` request through a kept-alive "
        "`HTTPAdapter`, the layer the app sends through too), the access token written to Key "
        "Vault (`set_secret`, the app's content type, tags and expiry), the record written "
        "back whole (`update_entity`, replace, on the ETag) with its changed columns set "
        "straight in the entity read; the due-index changes (one upsert, one delete per "
        "renewal) in entity-group transactions of 100, and the due index read twice, as the "
        f"sweep reads it. {concurrency} threads, as the sweep's concurrency. Both made "
        f"{run['token_calls']:,} and {bare['token_calls']:,} token calls and Key Vault "
        f"{_calls(run['vault'])} and {_calls(bare['vault'])}. Left out as product logic: the "
        "record parsed into a `Connection` and built back into an entity, `record_outcome` "
        "(status, schedule, notices), the lease owner's uuid, the client secret looked up in "
        "the secret store's version cache, the outbound policy around the token call (URL "
        "checks, address pinning, a bounded streamed read), the sweep's bounded submission, "
        "batch and window logic.",
        f"- CPU per renewal: the sweep process spent {_ms2(sweep_ms)}, the bare loop "
        f"{_ms2(bare_ms)} (its two halves bracket the sweep, so a drift in the machine's load "
        f"weighs on both): **{sweep['cpu_ratio']:.2f}x**, {sweep_ms - bare_ms:+.2f} ms; the "
        f"target allows up to {_ms2(SWEEP_CPU_TARGET * bare_ms)}. One after another "
        f"(concurrency 1, {one['worked']} renewals each, no threads contending for the GIL): "
        f"the sweep {_ms2(one_ms)}, the bare loop {_ms2(one_bare_ms)}, "
        f"{one_ms / one_bare_ms:.2f}x.",
        f"- Where a difference can come from, measured apart (`bench/offline.py`): the sweep "
        f"and the bare loop again, every SDK client, Key Vault and ServiceNow replaced by "
        f"in-memory fakes that answer at once ({memory['count']:,} renewals, concurrency "
        f"{concurrency}, least of {memory['rounds']} alternating rounds): the sweep's own logic "
        f"{_ms2(memory['sweep_ms'])} per renewal, the bare loop's {_ms2(memory['bare_ms'])} "
        f"({logic:+.2f} ms); one token call, one at a time against the stand-in (least of "
        f"{token['rounds']} alternating rounds of {token['calls']}): the app's "
        f"(`ServiceNowClient.client_credentials`, the outbound policy around `requests`) "
        f"{_ms2(token['app_ms'])}, the bare loop's {_ms2(token['bare_ms'])} ({outbound:+.2f} "
        f"ms). Together {logic + outbound:+.2f} ms per renewal, "
        f"{(bare_ms + logic + outbound) / bare_ms:.2f}x the bare loop if nothing else "
        f"differed. The rest of the measured difference, {rest:+.2f} ms, is in neither: "
        f"noise between runs (the bare loop's two halves differ by {spread:.2f} ms), or a "
        "cost that shows only with real calls at full concurrency (threads switching under "
        "the GIL: the sweep's main thread is woken at each finished renewal to submit the "
        "next; the one-after-another ratio above has no such switching). Context switches "
        f"per renewal: the sweep {run['switches'] / run['worked']:.0f}, the bare loop "
        f"{bare['switches'] / bare['worked']:.0f}.",
        f"- The product code's own CPU, profiled (cProfile on each thread's CPU clock, of the "
        f"in-memory sweep at concurrency 1, {hot['count']:,} renewals; cProfile slows what it "
        f"measures, so read shares, not times): {_ms2(hot['product_own_ms'])} per renewal in "
        "functions of "
        f"`connections/`, `renewal/` and `servicenow/` of {_ms2(hot['profiled_ms'])} "
        "profiled (the rest: the standard library, `requests` preparing the fake calls, the "
        "SDK's entity types, threads). The most of their own: "
        + "; ".join(
            f"`{entry['function']}` {entry['own_ms'] * 1000:.0f} µs "
            f"({entry['cumulative_ms'] * 1000:.0f} µs with what it calls, "
            f"{entry['calls']:.3g} {'call' if entry['calls'] == 1 else 'calls'})"
            for entry in hot["top"]
        )
        + ".",
        f"- If the CPU target is missed: the sweep process spends more than "
        f"{SWEEP_CPU_TARGET}x what the calls themselves cost. The decomposition says where: "
        "a large in-memory difference is product logic on the renewal path (the record "
        "parsed and built again: `from_entity_columns`, `to_entity_columns`, `format_time`, "
        "`parse_time`; `record_outcome`; the due-index batch and the pool's bookkeeping), "
        "taken out by doing less per renewal; a large token-call difference is the outbound "
        "policy (`safe_request`: URL checks, `session.prepare_request`, the streamed read), "
        "taken out by caching the checked origin per instance and preparing requests "
        "without the session merge; an extra that shows at full concurrency but not one "
        "after another is in how the threads are driven (each finished renewal notifies the "
        "submitting thread, which wakes and takes the GIL to submit one more: refilling in "
        "batches would wake it less often); a miss that nothing here explains is noise: run "
        "the figure again on an idle machine before changing code.",
        f"- The bound: the sweep process runs its Python under one GIL, so it can renew at "
        f"most 1,000 ÷ its CPU per renewal a second; all processes together share {cores} "
        f"cores; and the token call's added 50 ms, {concurrency} at a time, allows "
        f"{concurrency / TOKEN_LATENCY_S:,.0f}/s. For the sweep: {_limits(bound)}; the least, "
        f"{bound['bound_per_s']:.1f}/s ({bound['binding']}), against "
        f"{bound['per_s']:.1f}/s measured: **{bound['ratio']:.2f}x**. Other users took "
        f"{bound['others_cores']:.2f} of the {cores} cores meanwhile; with only the "
        f"{left:.2f} they left, the bound would have been {left_bound:.1f}/s and the sweep "
        f"{bound['per_s'] / left_bound:.2f}x it. The bare loop, against its own bound "
        f"({_limits(bare_bound)}): {bare_bound['per_s']:.1f}/s, "
        f"{bare_bound['ratio']:.2f}x: how near threads doing nothing but the calls get.",
        "- If the throughput target is missed: with one core binding, the sweep process's "
        "GIL sits idle part of the time, all threads waiting on I/O or on each other. What "
        "changes it: more concurrency (`RENEWAL_CONCURRENCY`, so some thread is always "
        "ready), no wait for a whole batch before the index is read again (the tail of each "
        "batch runs below full concurrency), or the sweep spread over more than one process "
        "(each with its own GIL: the Functions host's `FUNCTIONS_WORKER_PROCESS_COUNT`, or "
        "the due index split between sweeps), which also lifts the one-core bound; with all "
        "cores binding, less CPU per renewal in any process (here Azurite's and the "
        "stand-ins', which Azure does not charge to this machine, count too). If the bare "
        "loop misses by as much, the gap is Python threads doing I/O, not product logic.",
        f"- One after another (information): the same sweep with `concurrency=1` on "
        f"{sweep['sequential_sample']['worked']} connections, {per_connection_ms:.1f} ms each "
        f"(50 ms of it the token call's added latency), scaled linearly to {n:,}: the "
        f"concurrent sweep is {sweep['speedup']:.1f}x faster. The bound above allows at most "
        f"{per_connection_ms * bound['bound_per_s'] / 1000:.1f}x here, whatever the code: the "
        f"former 15x would need {15000 / per_connection_ms:.0f} renewals/s, so at most "
        f"{per_connection_ms / 15:.2f} ms of the sweep process's CPU per renewal (measured "
        f"{_ms2(sweep_ms)}) and {cores * per_connection_ms / 15:.2f} ms in all processes "
        f"together (measured {_ms2(bound['total_ms'])}).",
    ]
    if idle is not None:
        run_idle = idle["run"]
        calls = (
            idle["total_requests"] + sum(run_idle["vault"].values()) + run_idle["token_calls"]
        ) / idle["due"]
        lines.append(
            f"- Where the sweep process's CPU goes: each renewal makes {calls:.0f} calls: "
            f"table requests {idle['total_requests'] / idle['due']:.2f} (record read, lease "
            "write (a merge of its two columns), record write; the due-index changes, two per "
            "renewal, go out in entity-group transactions of 100), one Key Vault write and "
            f"one token call, about {sweep_ms / calls:.2f} ms of CPU each, nearly all of it in "
            "the Azure SDK's pipeline and `requests`/`urllib3`, as the bare loop shows."
        )
    return lines


def _idle_detail(idle: dict[str, Any]) -> list[str]:
    due = idle["due"]
    requests = ", ".join(
        f"{name} {count}" for name, count in sorted(idle["table_requests"].items())
    )
    return [
        "## Sweep cost when little is due, in detail",
        "",
        f"- Table requests of the sweep ({due} renewals): {requests}.",
        f"- Per renewal: {idle['total_requests'] / due:.2f} table requests, "
        f"{sum(idle['run']['vault'].values()) / due:.2f} Key Vault calls, "
        f"{idle['run']['token_calls'] / due:.2f} token calls.",
        f"- Seeding {idle['connections']:,} records took {idle['seed_seconds']:.1f} s "
        "(entity-group transactions of 100).",
    ]


def _vault_detail(results: dict[str, Any]) -> list[str]:
    lines = ["## Key Vault calls per operation", ""]
    lines += ["| operation | calls | by Key Vault operation |", "| --- | --- | --- |"]
    lines += [
        f"| {row['operation']} | {row['total']} | {_calls(row['calls'])} |"
        for row in results["vault"]
    ]
    lines += [
        "",
        "Counted by the Key Vault stand-in, in a worker that has already seen the secrets: "
        "exact secret versions are read from Key Vault once per process, then from memory "
        "(a fresh worker adds one `get` per secret it reads). Creates write the secrets they "
        "are given plus the first access token; a rename touches no secret; a renewal writes "
        "the new access token only. A delete deletes, waits for (`get_deleted`) and purges "
        "each secret name of the method, the refresh token's included even when the record "
        "names none (one may have been stored by a renewal whose record write then failed), "
        "so no credential outlives its connection: its two calls answer 404.",
    ]
    return lines


def _cpu(cpu: dict[str, float]) -> str:
    shown = ", ".join(f"{name} {value:.2f} ms" for name, value in cpu.items())
    return f"{shown} (total {sum(cpu.values()):.2f} ms)"


def _proxy_detail(proxy: dict[str, Any]) -> list[str]:
    direct, proxied, load = proxy["direct"], proxy["proxied"], proxy["throughput"]
    p50, cpu = proxy["parts"]["p50"], proxy["parts"]["cpu"]
    added = proxied["p50"] - direct["p50"]
    app = load["proxied"]["cpu_per_call_ms"]
    app_ms, total_ms = app["app"], sum(app.values())
    cores = os.cpu_count() or 1
    needed = PROXY_THROUGHPUT_TARGET * load["direct"]["per_second"]
    lines = [
        "## Proxy, in detail",
        "",
        f"- The calls: `GET {proxy['record_path']}` of one incident ({proxy['record_bytes']} "
        "bytes of JSON), direct to the ServiceNow stand-in with `x-sn-apikey`, proxied through "
        "an API-token connection to it with `x-functions-key`. Both come from `bench/load.py` "
        "in a process of its own, with the same `requests` code and a new connection per call "
        "on both sides (the local runner closes each connection after its answer, so only the "
        "direct side could have kept one alive); the latency calls alternate direct and proxied.",
        f"- Where a proxied call's time goes (p50 of each part over {proxy['calls']} calls one "
        f"at a time, timed in the app's process; the parts need not add up): total "
        f"{p50['total']:.2f} ms = the HTTP hop to the local runner and back "
        f"{p50['http hop']:.2f} ms + the runner's handling {p50['handler']:.2f} ms, of which "
        f"the connection's record read from Table storage {p50['record read']:.2f} ms, the call "
        f"to the instance (a kept-alive connection from the app's pool) "
        f"{p50['instance call']:.2f} ms, and the rest (routing, function key, path rules, "
        f"headers each way, the audit entry queued) {p50['rest']:.2f} ms. The direct call "
        f"takes {direct['p50']:.2f} ms at p50 on a new connection.",
        f"- CPU of the handling thread per proxied call (means): {cpu['handler']:.2f} ms, of "
        f"which the record read {cpu['record read']:.2f} ms, the instance call "
        f"{cpu['instance call']:.2f} ms, the rest {cpu['rest']:.2f} ms; the app's process in "
        f"all (request parsing, the audit writer) {proxy['parts']['app_cpu_ms']:.2f} ms.",
    ]
    if added > PROXY_ADDED_TARGET_MS:
        lines.append(
            f"- What bounds the added time ({added:.2f} ms at p50 against "
            f"{PROXY_ADDED_TARGET_MS:.0f} ms): the record read alone is "
            f"{p50['record read']:.2f} ms and the runner's own HTTP hop {p50['http hop']:.2f} "
            "ms, on a path the direct call does not take at all. Meeting it would need the "
            "connection record from memory on a warm worker (kept briefly, as the secrets are "
            "kept: a product change, since a status change would then take that long to stop "
            "calls) instead of a Table storage read per call, and a cheaper front than the "
            "local runner's werkzeug server (in Azure the Functions host is that front)."
        )
    lines += [
        f"- CPU per call at concurrency {load['concurrency']}: proxied: "
        f"{_cpu(load['proxied']['cpu_per_call_ms'])}; direct: "
        f"{_cpu(load['direct']['cpu_per_call_ms'])} (`app` is the bench process serving the "
        "app, idle in the direct runs; `azurite` serves the record reads and audit writes).",
        f"- What bounds throughput here: the app's CPU runs under one GIL, so at most "
        f"{1000 / app_ms:.0f} proxied calls/s; all processes together need {total_ms:.2f} ms "
        f"of CPU per proxied call on {cores} cores, so at most "
        f"{cores * 1000 / total_ms:.0f}/s. The direct calls need "
        f"{sum(load['direct']['cpu_per_call_ms'].values()):.2f} ms in all.",
    ]
    if load["ratio"] < PROXY_THROUGHPUT_TARGET:
        front = proxy["parts"]["app_cpu_ms"] - cpu["handler"]
        lines.append(
            f"- What {PROXY_THROUGHPUT_TARGET}x would need here: {needed:.0f} proxied calls/s, "
            f"so at most {1000 / needed:.2f} ms of the app's CPU per call (measured "
            f"{app_ms:.2f}) and at most {cores * 1000 / needed:.2f} ms in all processes "
            f"together (measured {total_ms:.2f}). The proxied call does all the direct one does "
            "(the stand-in's answer, the load generator's call) plus, in the app, what lies "
            "outside the handling (werkzeug's server: a thread per connection, parsing the "
            f"request, writing the answer; the audit writer: {front:.2f} ms of CPU one at a "
            f"time), the record read ({cpu['record read']:.2f} ms) and the instance call "
            f"({cpu['instance call']:.2f} ms), each through werkzeug, the Azure SDK or "
            "`requests` in Python, and the audit write in Azurite. The largest parts to take "
            "out would be the record read per call and the runner's front, as above."
        )
    lines.append(
        f"- Key Vault: {sum(proxy['vault'].values())} calls ({_calls(proxy['vault'])}) in "
        f"{proxy['proxied_calls']:,} proxied calls (latency, parts and throughput together), "
        f"counted by the Key Vault stand-in after {proxy['warmup_rounds']} warm-up rounds: the "
        "API token is read from "
        "Key Vault once per secret version and then held in memory."
    )
    return lines


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"


def _s(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def _trigger_rows(triggers: dict[str, Any]) -> tuple[list[str], bool]:
    burst, bare, delivery = triggers["burst"], triggers["bare"], triggers["delivery"]
    idle, latency = triggers["idle"], triggers["latency"]
    n = burst["records"]
    fast = triggers["ratio"] >= QUEUED_TARGET
    calls = burst["instance_calls_per_1000"]
    few_calls = calls <= CALLS_PER_1000_TARGET
    warm, cold = idle["warm"], idle["cold"]
    cheap = (
        warm["instance_calls"] <= IDLE_CALLS_TARGET
        and warm["table_requests"] <= IDLE_REQUESTS_TARGET
    )
    total, measured = latency["total"], latency["measured"]
    soon = total["p95"] <= LATENCY_P95_TARGET_S
    delivered_ok = (
        delivery["accepted"] == delivery["events"]
        and delivery["duplicates"] == 0
        and delivery["invalid_signatures"] == 0
    )
    warm_by = ", ".join(f"{name} {count:g}" for name, count in warm["by_table"].items())
    rows = [
        f"| 8. triggers: burst, events queued | {n:,} matching records changed by one bulk "
        f"update, the trigger polled directly in the bench process until caught up "
        f"({_count(len(burst['polls']), 'poll')}): "
        f"**{burst['queued_per_second']:.0f} events queued/s** "
        f"(the last queued {_s(burst['last_queued_seconds'])} after the poll's start); the whole "
        f"poll, events recorded and cursor moved, {_s(burst['whole_seconds'])} "
        f"| bare `azure-storage-queue` `send_message` loop, the same {bare['messages']:,} JSON "
        f"bodies one after another to a fresh queue: {bare['per_second']:.0f}/s "
        f"({_s(bare['seconds'])}) | **{triggers['ratio']:.2f}x** the bare loop "
        f"| ≥ {QUEUED_TARGET}x | {_ok(fast)} |",
        f"| 8. triggers: instance calls per 1,000 events | **{calls:.1f}** "
        f"({burst['instance_calls']} Table API requests for the burst's {n:,} events, from the "
        f"stand-in's request log) | — | — | ≤ {CALLS_PER_1000_TARGET:.0f} | {_ok(few_calls)} |",
        f"| 8. triggers: delivery | {delivery['events']:,} of the burst's events by "
        f"`triggers.delivery.deliver`, {delivery['concurrency']} at once, to the event receiver "
        f"(signature checked): **{delivery['per_second']:.0f} events/s**; {delivery['accepted']:,} "
        f"accepted, {delivery['duplicates']} duplicates, {delivery['invalid_signatures']} bad "
        f"signatures | — | — | printed | {_ok(delivered_ok)} |",
        f"| 8. triggers: idle poll | nothing new, polled by the worker that polled it last: "
        f"**{warm['instance_calls']} instance call, {warm['table_requests']} table requests** "
        f"({warm_by}), p50 {_ms(warm['p50_ms'])} ({idle['polls']} polls); on a cold worker "
        f"(the trigger not in memory): {cold['instance_calls']} instance call, "
        f"{cold['table_requests']} table requests (the trigger read too), p50 "
        f"{_ms(cold['p50_ms'])} | — | — | {IDLE_CALLS_TARGET} instance call, "
        f"≤ {IDLE_REQUESTS_TARGET} table requests | {_ok(cheap)} |",
        f"| 8. triggers: latency | record visible → its event at the receiver, polled every "
        f"{latency['interval']} s: p95 **{_s(total['p95'])}**, p50 {_s(total['p50'])}, max "
        f"{_s(total['max'])} ({latency['samples']} records, "
        f"{_count(latency['cycles'], 'poll cycle')}; "
        f"the wait for the poll simulated, the rest measured) | the pipeline alone (poll "
        f"boundary → event at the receiver, measured through the host's listeners): p50 "
        f"{_s(measured['p50'])}, p95 {_s(measured['p95'])} | p95 = {_s(total['p95'])} "
        f"| ≤ {LATENCY_P95_TARGET_S:.0f} s | {_ok(soon)} |",
    ]
    return rows, fast and few_calls and cheap and soon and delivered_ok


def _trigger_detail(triggers: dict[str, Any]) -> list[str]:
    burst, bare, delivery = triggers["burst"], triggers["bare"], triggers["delivery"]
    idle, latency = triggers["idle"], triggers["latency"]
    n = burst["records"]
    cores = os.cpu_count() or 1
    polls = "; ".join(
        f"`{poll['outcome']}` ending at {_s(poll['seconds'])}" for poll in burst["polls"]
    )
    paths = ", ".join(f"{path} {count}" for path, count in sorted(burst["instance_paths"].items()))
    requests = ", ".join(
        f"{name} {count}" for name, count in sorted(burst["table_requests"].items())
    )
    poll_cpu, bare_cpu = burst["cpu_per_event_ms"], bare["cpu_per_message_ms"]
    phases = burst["phases"]
    sending = n / phases["queue"]["seconds"]
    rest = burst["whole_seconds"] - sum(phase["seconds"] for phase in phases.values())
    queue = phases["queue"]
    lines = [
        "## Triggers, in detail",
        "",
        "- Set-up: an API-token connection made through the API; the burst and idle triggers "
        "written straight into the trigger store (as `tests/trigger_support.TriggerWorld` "
        "writes them, with no due entry, so only the bench polls them); `triggers.poller.poll` "
        "run directly in the bench process on the app's `TriggerServices` with queues of the "
        "bench's own and every table client wrapped to count its requests (as for figure 2). "
        "Instance calls are the Table API requests in the ServiceNow stand-in's request log. "
        "The event receiver (`bench/standins.py`: the stack's `EventReceiver` checks, "
        "`X-Signature` and `X-Event-Id`) runs in the stand-ins' process. This figure runs "
        "last, in the order latency, idle polls, burst, bare loop, deliveries, and leaves the "
        "burst's and the bare loop's messages in their queues: Azurite scans every stored "
        "message on each queue receive and delete, and its queue GC removes deleted messages "
        "at a cost that grows with their number (see `bench/triggers.py`).",
        f"- The burst: {n:,} `incident` records matching the trigger's query "
        f"(`category=network^active=true`), last changed in 2020, all changed by one bulk "
        f"update after the trigger's start (sharing {_count(burst['seconds_changed'], 'second')} "
        f"of `sys_updated_on`). Polls: {polls}. "
        f"Instance calls: {paths} (keyset pages of 1,000, the last ones empty). Table requests: "
        f"{requests} ({burst['table_requests_total']} in all: the events recorded in "
        "entity-group transactions of 100 entities, two per event; range queries of the "
        "trigger's partition for the versions already emitted and, after emitting, for events "
        "past retention to prune; the lease and the cursor as merges of the trigger). The "
        "first event was queued "
        f"{_s(burst['first_queued_seconds'])} after the poll's start; each message is "
        f"{burst['message_bytes']:.0f} bytes of JSON before base64.",
        f"- Where the whole poll's {_s(burst['whole_seconds'])} went: reading "
        f"{_count(phases['read']['n'], 'page')} from the instance "
        f"{_s(phases['read']['seconds'])}; queuing the events ({_count(queue['n'], 'call')} "
        f"of `send_all`, {burst['senders']} sends at once) {_s(queue['seconds'])}, "
        f"{n / queue['seconds']:.0f} events/s while sending; recording them "
        f"({_count(phases['record']['n'], 'call')} of `EventLog.record`, its transactions one "
        f"after another) {_s(phases['record']['seconds'])}; the rest (the trigger and "
        f"connection reads, the versions already emitted, events built, lease, cursor, "
        f"pruning) {_s(rest)}. Each page is read, queued and recorded before the next is "
        "read, so these add up rather than overlap.",
        f"- CPU per event during the burst: {_cpu(poll_cpu)}; the bare loop, per message: "
        f"{_cpu(bare_cpu)} (`bench` is this process: the poll, or the bare loop).",
        f"- What bounds the rate here: queuing alone ran at {sending:.0f} events/s and the "
        f"bare loop at {bare['per_second']:.0f}/s, so {burst['senders']} sends at once gained "
        f"{sending / bare['per_second']:.2f}x over one after another: each send costs this "
        f"process about {bare_cpu['bench']:.2f} ms of CPU (the bare loop's per message, nearly "
        "all of it in the queue SDK and `requests`), under one GIL, so at most "
        f"{1000 / bare_cpu['bench']:.0f} sends/s whatever the concurrency. The recording, "
        f"{_s(phases['record']['seconds'])} in all, comes on top, page after page. Over the "
        f"whole poll this process spent {poll_cpu['bench']:.2f} ms of CPU per event: at most "
        f"{1000 / poll_cpu['bench']:.0f} events/s here.",
    ]
    if triggers["ratio"] < QUEUED_TARGET:
        needed = QUEUED_TARGET * bare["per_second"]
        lines.append(
            f"- What {QUEUED_TARGET}x would need here: {needed:.0f} events queued/s, so at most "
            f"{1000 / needed:.2f} ms of the bench process's CPU per event from the poll's start "
            f"to its last event queued (measured {poll_cpu['bench']:.2f} ms for the whole "
            f"poll) and at most {cores * 1000 / needed:.2f} ms in all processes together "
            f"(measured {sum(poll_cpu.values()):.2f} ms)."
        )
    deliver_cpu = delivery["cpu_per_event_ms"]
    requests = ", ".join(
        f"{name} {count}" for name, count in sorted(delivery["table_requests"].items())
    )
    lines += [
        f"- Delivery: the first {delivery['events']:,} of the burst's queued messages, each "
        f"handed to `deliver` as `deliver_event` hands it (the queue's receive and delete are "
        f"the host's and not included), {delivery['concurrency']} at once (host.json "
        f"`batchSize`); {delivery['events']:,} in {_s(delivery['seconds'])}. Each delivery: "
        "whether it was delivered already (a read of its `sn-` entity), the signed POST on a "
        "new connection (a `requests` session per event, as `deliver_event` makes), then the "
        f"mark (a merge): table requests {requests} "
        f"({delivery['table_requests_per_event']:.2f} per event). CPU per event: "
        f"{_cpu(deliver_cpu)} (`stand-ins` is the receiver). The bench process's CPU, under "
        f"one GIL, allows at most {1000 / deliver_cpu['bench']:.0f} deliveries/s; all "
        f"processes together on {cores} cores at most "
        f"{cores * 1000 / sum(deliver_cpu.values()):.0f}/s.",
    ]
    warm, cold = idle["warm"], idle["cold"]

    def by(run: dict[str, Any]) -> str:
        return ", ".join(f"{name} {count:g}" for name, count in run["by_table"].items())

    lines.append(
        f"- Idle poll: a `problem` trigger whose query matches {idle['records']:,} records, none "
        "changed since long before the trigger started, polled once, then "
        f"{idle['polls']} times by the same worker (warm) and {idle['polls']} times with the "
        "poller's memory of triggers (`KNOWN`) cleared before each (cold). Per poll, warm: "
        f"{warm['instance_calls']} instance call (the one keyset page, empty), "
        f"{warm['table_requests']} table requests ({by(warm)}: the connection's record and the "
        f"trigger's new position), {warm['vault_calls']} Key Vault calls; cold: "
        f"{cold['instance_calls']} instance call, {cold['table_requests']} table requests "
        f"({by(cold)}), {cold['vault_calls']} Key Vault calls (the API token is held in "
        "memory by every worker that has read it; a new process adds one Key Vault `get`). "
        "Every poll of each kind cost the same."
    )
    total, measured, wait = latency["total"], latency["measured"], latency["wait"]
    parts = latency["parts"]
    lines += [
        f"- Latency, how: a trigger on `sc_req_item` made through the API (interval "
        f"{latency['interval']} s), served by the local host's `poll_trigger` and "
        f"`deliver_event` queue listeners (host.json: batches of {latency['batch_size']}, handled "
        "one after another by the local host, and an idle queue read at most every "
        f"{latency['max_polling_seconds']:.0f} s). In each of "
        f"{_count(latency['cycles'], 'cycle')}: the "
        f"trigger's due entry set to now (the simulated {latency['interval']} s since its last "
        "poll have passed), the listeners left idle "
        "for 2.5 s (so they wait between queue reads as long as they do between polls), "
        f"{latency['records']} matching records made visible in the stand-in, then, at the poll "
        "boundary, the `trigger_dispatch` timer function run, as the timer runs it; the time "
        "from that boundary to each event's arrival at the receiver (its clock, `time.time()` "
        "on the same machine) is measured. Each record is also given a moment, uniformly "
        f"random within the {latency['interval']} s before the boundary, at which it became "
        "visible; its latency is the simulated wait from that moment to the boundary plus its "
        "measured time.",
        f"- Latency, figures: total p50 {_s(total['p50'])}, p95 {_s(total['p95'])}, max "
        f"{_s(total['max'])}; of it the simulated wait p50 {_s(wait['p50'])}, p95 "
        f"{_s(wait['p95'])}, and the measured pipeline p50 {_s(measured['p50'])}, p95 "
        f"{_s(measured['p95'])}, max {_s(measured['max'])}. The pipeline's parts (medians "
        f"over the cycles): the boundary to the poll's start {_s(parts['to_poll'])} (the "
        "dispatch, then the listener's next queue read), the poll "
        f"{_s(parts['poll'])}, its end to the first event at the receiver "
        f"{_s(parts['to_first'])}, the first to the last event {_s(parts['first_to_last'])} "
        f"(the local listener delivers one at a time). {latency['duplicates']} duplicates, "
        f"{latency['refused']} refused. The floor is the interval itself: a record made "
        f"visible just after a poll waits {latency['interval']} s for the next.",
    ]
    return lines
