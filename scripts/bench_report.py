#!/usr/bin/env python3
"""Result blocks of scripts/bench.sh: reads what a run left under OUT/<name>/ and prints the
figures BENCHMARKS.md reports. Usage: bench_report.py OUT worker|storm|baseline|cost|producer

Definitions (the same words in BENCHMARKS.md):
- active window: from the first to the last Graph request the simulator received (token
  requests, process start-up and the idle exit excluded);
- achieved rate: Graph requests (every attempt, 429s included) / active window;
- steady-state rate: mean of the simulator's per-second counts, without the first 2 and the
  last 2 seconds of the window (the opening burst and the tail); for the storm, the settled
  rate also leaves out the first 10 seconds (while the budget adapts).
"""

import json
import os
import sys


def time_v(path):
    """CPU seconds, peak RSS (MB) and wall seconds from `/usr/bin/time -v`."""
    fields = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.strip().rpartition(": ")
            fields[key] = value
    wall = 0.0
    for part in fields["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":"):
        wall = wall * 60 + float(part)
    cpu = float(fields["User time (seconds)"]) + float(fields["System time (seconds)"])
    rss_mb = int(fields["Maximum resident set size (kbytes)"]) / 1024
    return cpu, rss_mb, wall


def client_stats(path):
    """The worker's own Graph counters, from its last log line ("worker stopped")."""
    found = {}
    with open(path) as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            graph = event.get("graph") or event.get("fields", {}).get("graph")
            if graph:
                found = json.loads(graph)
    return found



def unknown_budget(out, name):
    """unknown / comego: efficiency against the simulator's real budget after a warm-up."""
    d = os.path.join(out, name)
    with open(os.path.join(d, "stats.json")) as f:
        stats = json.load(f)
    with open(os.path.join(d, "run.json")) as f:
        run = json.load(f)
    budget = run["budget"]
    per_second = stats["graph_requests_per_second"]
    throttled = stats.get("throttled_per_second", [])
    n = len(per_second)
    served = [per_second[s] - (throttled[s] if s < len(throttled) else 0) for s in range(n)]
    warm = 20
    steady = range(min(warm, n), max(warm, n - 3))
    eff = sum(served[s] for s in steady) / (budget * max(1, len(steady)))
    eff_all = sum(served[: max(0, n - 3)]) / (budget * max(1, n - 3))
    first_429s = sum(throttled[:warm])
    later_429s = sum(throttled[warm:])
    print(f"== {name}: simulator budget {budget}/s ({run['sim_args']}) ==")
    print(f"active seconds              {n}")
    print(f"served / budget (s {warm}..n-3)   {eff * 100:.1f}%")
    print(f"served / budget (s 0..n-3)      {eff_all * 100:.1f}%")
    print(f"429s in the first {warm} s       {first_429s}")
    print(f"429s after                  {later_429s}")
    print(f"violations                  {stats['violations']}")
    print(f"per-second served           {served}")

def load(out, name):
    d = os.path.join(out, name)
    with open(os.path.join(d, "stats.json")) as f:
        stats = json.load(f)
    with open(os.path.join(d, "run.json")) as f:
        run = json.load(f)
    cpu, rss, wall = time_v(os.path.join(d, "worker.time"))
    client = client_stats(os.path.join(d, "worker.err"))
    window = (stats["last_graph_request_ms"] - stats["first_graph_request_ms"]) / 1000
    per_second = stats["graph_requests_per_second"]
    return dict(stats=stats, run=run, cpu=cpu, rss=rss, wall=wall, client=client,
                window=window, per_second=per_second)


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def graph_block(r, title, settle_from=2):
    s, run = r["stats"], r["run"]
    users, budget, sim_budget = run["users"], run["budget"], run["sim_budget"]
    requests = s["graph_requests"]
    achieved = requests / r["window"]
    steady = mean(r["per_second"][settle_from:-2])
    client = r["client"]
    lines = [
        f"== {title} ==",
        f"users {users}, concurrency {run['concurrency']}, worker budget {budget}/s, "
        f"simulator budget {sim_budget}/s (1 s buckets), latency 100 ms ± 20 ms",
        f"simulator: {run['sim_args']}",
        f"load average before / after: {run['load_before']} / {run['load_after']}",
        f"worker wall time            {r['wall']:.1f} s (process: start-up, work, 3 s idle exit)",
        f"active window               {r['window']:.1f} s (first to last Graph request)",
        f"users/s                     {users / r['window']:.2f}",
        f"Graph requests              {requests}",
        f"achieved rate               {achieved:.1f}/s = {achieved / sim_budget:.1%} of the "
        f"simulator's budget" + (f", {achieved / budget:.1%} of the worker's" if budget != sim_budget else ""),
        f"steady-state rate (s {settle_from}..n-2)   {steady:.1f}/s = {steady / sim_budget:.1%}",
        f"peak requests in 1 s        {s['peak_requests_per_second']}",
        f"429s received               {s['throttled']} ({sum(s.get('throttled_per_second', [])[settle_from:])} "
        f"from second {settle_from} on)",
        f"violations                  {s['violations']}",
        f"worker CPU                  {r['cpu']:.2f} s",
        f"worker peak RSS             {r['rss']:.1f} MB",
    ]
    if client:
        lines.append(
            f"client: throttled {client.get('throttled')}, retries {client.get('retries')}, "
            f"paused {client.get('pause_secs', 0):.1f} s, budget wait {client.get('budget_wait_secs', 0):.0f} s "
            f"(summed over requests), factor at exit {client.get('factor', 1):.2f}")
    return lines, dict(users_per_s=users / r["window"], achieved=achieved, steady=steady)


def endpoint_counts(stats):
    """Requests per kind of call, and DELETEs per status."""
    kinds = {"list": 0, "signInPreferences": 0, "delete": 0, "revoke": 0, "other": 0}
    deletes = {}
    for endpoint, by_status in stats["requests_by_endpoint"].items():
        n = sum(by_status.values())
        if endpoint.startswith("POST /{tenant}"):
            continue
        if endpoint.startswith("GET") and endpoint.endswith("/authentication/methods"):
            kinds["list"] += n
        elif endpoint.startswith("GET") and endpoint.endswith("/signInPreferences"):
            kinds["signInPreferences"] += n
        elif endpoint.startswith("DELETE"):
            kinds["delete"] += n
            for status, c in by_status.items():
                deletes[status] = deletes.get(status, 0) + c
        elif endpoint.endswith("/revokeSignInSessions"):
            kinds["revoke"] += n
        else:
            kinds["other"] += n
    return kinds, deletes


def cost_block(w, two):
    lines = ["== 5. Worker cost =="]
    s = w["stats"]
    users = w["run"]["users"]
    requests = s["graph_requests"]
    lines.append(f"worker run: {w['cpu']:.2f} CPU-s for {requests} Graph requests = "
                 f"{w['cpu'] / requests * 1000:.4f} CPU-s per 1,000 requests (whole process)")
    kinds, deletes = endpoint_counts(s)
    deleted = s["methods_deleted"]
    reads = kinds["signInPreferences"]
    minimum = users + deleted + min(reads, users) + kinds["revoke"]
    verify = kinds["list"] - users
    wasted = deletes.get("400", 0)
    lines += [
        f"per user ({users} users, {deleted} methods removed = {deleted / users:.2f}/user):",
        f"  list methods (first)       {users / users:.2f}",
        f"  list methods (verify)      {verify / users:.2f}   <- ours: re-list after deleting",
        f"  signInPreferences read     {reads / users:.2f}   <- ours: learn the default (only when >1 candidate)",
        f"  DELETE                     {kinds['delete'] / users:.2f}   by status {deletes}",
        f"  revokeSignInSessions       {kinds['revoke'] / users:.2f}",
        f"  other                      {kinds['other'] / users:.2f}",
        f"  total                      {requests / users:.2f}",
        f"  minimum (1 list + 1 DELETE per removed method + the default read when made + revoke) "
        f"{minimum / users:.2f}",
        f"  wasted DELETEs (400)       {wasted} of {kinds['delete']} = {wasted / max(kinds['delete'], 1):.1%}",
    ]
    if two:
        s2 = two["stats"]
        u2 = two["run"]["users"]
        k2, d2 = endpoint_counts(s2)
        w2 = d2.get("400", 0)
        lines += [
            f"two-pass comparison ({u2} users, simulator refuses signInPreferences with 403, "
            f"so the worker deletes in two passes like Microsoft's scripts):",
            f"  DELETE {k2['delete'] / u2:.2f}/user by status {d2}; wasted (400) {w2} of "
            f"{k2['delete']} = {w2 / max(k2['delete'], 1):.1%}; total {s2['graph_requests'] / u2:.2f} requests/user "
            f"(incl. {k2['signInPreferences'] / u2:.2f} refused reads)",
        ]
    return lines


def producer_block(out):
    d = os.path.join(out, "producer")
    with open(os.path.join(d, "run.json")) as f:
        run = json.load(f)
    rows = run["rows"]
    cpu, rss, wall = time_v(os.path.join(d, "enqueue.time"))
    start = float(open(os.path.join(d, "enqueue.start")).read())
    end = float(open(os.path.join(d, "enqueue.end")).read())
    validated = None
    with open(os.path.join(d, "enqueue.err")) as f:
        for line in f:
            stamp, _, text = line.partition(" ")
            if text.startswith("source:"):
                validated = float(stamp)
                break
    ccpu, crss, cwall = time_v(os.path.join(d, "ceiling.time"))
    ceiling_line = open(os.path.join(d, "ceiling.out")).read().strip()
    ceiling = float(ceiling_line.split()[1])
    rate = rows / wall
    lines = [
        "== 4. Producer ==",
        f"{rows} rows, requests of {run['size']} bytes (the body of the first one enqueued, without its signature), confirm window 2000",
        f"load average before / after: {run['load_before']} / {run['load_after']}",
        f"enqueue wall time           {wall:.1f} s, CPU {cpu:.1f} s, peak RSS {rss:.1f} MB",
        f"enqueue rows/s (whole run)  {rate:.0f} = {rate / ceiling:.1%} of the ceiling",
    ]
    if validated:
        v = validated - start
        p = end - validated
        lines += [
            f"  copy + validation pass    {v:.1f} s ({rows / v:.0f} rows/s)",
            f"  publish pass              {p:.1f} s ({rows / p:.0f} rows/s = {rows / p / ceiling:.1%} of the ceiling)",
        ]
    lines.append(f"ceiling (publish_ceiling)   {ceiling_line}; CPU {ccpu:.1f} s, peak RSS {crss:.1f} MB")
    total = os.path.join(d, "ceiling-total.out")
    if os.path.exists(total):
        total_line = open(total).read().strip()
        total_ceiling = float(total_line.split()[1])
        lines.append(f"ceiling at the signed size  {total_line} (body and headers as published, {run.get('total')} bytes): "
                     f"enqueue = {rate / total_ceiling:.1%} of it")
    return lines


def main():
    out, what = sys.argv[1], sys.argv[2]
    results = {}
    if what == "worker":
        lines, results = graph_block(load(out, "worker"), "1. Worker efficiency")
    elif what in ("unknown", "comego"):
        unknown_budget(out, what)
        return
    elif what == "storm":
        lines, results = graph_block(load(out, "storm"), "2. Storm (simulator at half the worker's budget)", settle_from=10)
    elif what == "baseline":
        lines, results = graph_block(load(out, "baseline"), "3. Sequential baseline (concurrency 1)")
        worker = os.path.join(out, "worker", "result.json")
        if os.path.exists(worker):
            w = json.load(open(worker))
            lines.append(f"speed-up of the worker run: {w['users_per_s']:.2f} / {results['users_per_s']:.2f} users/s "
                         f"= {w['users_per_s'] / results['users_per_s']:.1f}x")
    elif what.startswith("sweep-"):
        r = load(out, what)
        _, results = graph_block(r, what)
        lines = [f"concurrency {r['run']['concurrency']:>3}: {results['achieved']:.1f}/s = "
                 f"{results['achieved'] / r['run']['budget']:.1%} of the budget (steady {results['steady']:.1f}/s), "
                 f"{results['users_per_s']:.1f} users/s, 429s {r['stats']['throttled']}, load {r['run']['load_before']}"]
    elif what == "cost":
        two = load(out, "two-pass") if os.path.exists(os.path.join(out, "two-pass", "stats.json")) else None
        lines = cost_block(load(out, "worker"), two)
    elif what == "producer":
        lines = producer_block(out)
    else:
        sys.exit(f"unknown result {what}")
    if results:
        with open(os.path.join(out, what, "result.json"), "w") as f:
            json.dump(results, f)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
