# The peer of `hydrant bench --query`: DuckDB running the same query over
# the same JSON-lines files, one thread, in one connection, `runs` times.
# Prints one JSON object: {"times_s": [...], "rows": [[count, sum]]}, or
# {"missing": "..."} when DuckDB is not installed.
import json
import sys
import time


def main():
    files, runs = sys.argv[1], int(sys.argv[2])
    try:
        import duckdb
    except ImportError as e:
        print(json.dumps({"missing": str(e)}))
        return
    con = duckdb.connect()
    con.execute("SET threads = 1")
    sql = f"SELECT count(*), sum(v) FROM read_json_auto('{files}')"
    times, rows = [], None
    for _ in range(runs):
        start = time.perf_counter()
        rows = con.execute(sql).fetchall()
        times.append(time.perf_counter() - start)
    print(json.dumps({"times_s": times, "rows": [list(r) for r in rows]}))


main()
