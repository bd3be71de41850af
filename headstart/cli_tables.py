"""The tables the CLI's commands print (rank, compare, models, fewshot-eval): results in, a rich `Table` out.

Apart from cli.py, which parses and calls the API, so each reads whole; like it, torch-free.
"""

from __future__ import annotations

from rich.table import Table


def rank_table(data: str, results: list[dict]) -> Table:
    table = Table(title=f"transferability on {data} (higher is better)")
    for col in ("backbone", "LogME", "LEEP", "probe accuracy", "seconds"):
        table.add_column(col, no_wrap=True)
    for r in results:
        leep = f"{r['leep']:.3f}" if "leep" in r else "-"
        table.add_row(r["backbone"], f"{r['logme']:.3f}", leep, f"{r['probe_accuracy']:.3f}", f"{r['seconds']:.1f}")
    return table


def compare_table(data: str, rows: list[dict]) -> Table:
    table = Table(title=f"transfer vs from scratch on {data}")
    for col in ("per class", "method", "test accuracy", "macro-F1", "seconds"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["per_class"]), r["method"], f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}",
                      f"{r['seconds']:.0f}")
    return table


def models_table(rows: list[dict]) -> Table:
    table = Table(title="backbones")
    for col in ("name", "modality", "source", "features", "offline now"):
        table.add_column(col, no_wrap=True)
    table.add_column("description")
    for r in rows:
        table.add_row(r["name"], r["modality"], r["source"], str(r["features"] or "?"),
                      "[green]yes[/]" if r["available"] else "[red]no[/]", r["description"])
    return table


def fewshot_table(data: str, ways: int, result: dict) -> Table:
    table = Table(title=f"{ways}-way few-shot accuracy on {data} ({result['backbone']})")
    for col in ("shots", "method", "accuracy", "95% interval", "episodes", "s/episode"):
        table.add_column(col)
    for k, row in result["shots"].items():
        for method, r in row.items():
            table.add_row(k, method, f"{r['mean']:.3f}", f"± {r['ci95']:.3f}", str(r["episodes"]),
                          f"{r['seconds_per_episode']:.2f}")
    return table
