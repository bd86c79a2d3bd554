# The peers of `hydrant bench --convert`: the same JSON lines file into
# Parquet (Snappy, the default of all three) by DuckDB and by pyarrow, each
# held to one thread, timed by the CPU seconds this process spends on it.
# Prints one JSON object: {"duckdb": {...}, "pyarrow": {...}}, a tool that
# is not installed reported as {"missing": "..."}.
import json
import os
import sys
import time


def timed(work):
    wall, cpu = time.perf_counter(), time.process_time()
    rows = work()
    return {
        "rows": rows,
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
    }


def duckdb_run(src, out):
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 1")

    def work():
        con.execute(
            f"COPY (SELECT * FROM read_json('{src}', format = 'newline_delimited')) "
            f"TO '{out}' (FORMAT parquet)"
        )

    result = timed(work)
    result["rows"] = con.execute(f"SELECT count(*) FROM '{out}'").fetchone()[0]
    return result


def pyarrow_run(src, out):
    import pyarrow
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    pyarrow.set_cpu_count(1)
    pyarrow.set_io_thread_count(1)

    def work():
        table = pj.read_json(src, read_options=pj.ReadOptions(use_threads=False))
        pq.write_table(table, out)
        return table.num_rows

    return timed(work)


def main():
    src, workdir, tools = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    result = {}
    for name, run in (("duckdb", duckdb_run), ("pyarrow", pyarrow_run)):
        if name not in tools:
            continue
        out = os.path.join(workdir, f"{name}.parquet")
        try:
            result[name] = run(src, out)
        except ImportError as e:
            result[name] = {"missing": str(e)}
        finally:
            if os.path.exists(out):
                os.remove(out)
    print(json.dumps(result))


main()
