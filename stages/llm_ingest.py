"""`vgf ingest domain=llm`: a prompt set -> the canonical prompt files (``vgfcli.llm.prompts``).

The source is a JSON Lines file, a Parquet file or a ``datasets`` folder (``prompts.source=file``), or
the demo set vgf makes from its demo corpus (``prompts.source=demo``: prompts, reference continuations
and preference pairs labelled by a known rule, ``vgfcli.llm.corpus``). Two outputs: ``prompts.jsonl``
(the training split: SFT pairs and preference pairs) and ``val_prompts.jsonl`` (held out: the prompts
`evaluate` scores). Everything is checked before a byte is written.
"""

from __future__ import annotations

from pathlib import Path

from vgfcli.errors import VgfError
from vgfcli.stage import Inputs, Outcome, Stage, StageResult
from vgfcli.ui import summary_table


class IngestPromptsStage(Stage):
    name = "ingest-prompts"
    config_name = "llm"
    domain = "llm"
    code_version = 1
    main_metrics = ("train_prompts", "val_prompts")
    produces = ("prompts",)

    def resolve_inputs(self, cfg, upstream) -> Inputs:
        p = cfg.prompts
        if p.source == "demo":
            return Inputs(info={"source": "demo"})
        if p.path is None:
            raise VgfError("prompts.source=file needs prompts.path=FILE (.jsonl, .parquet or a datasets folder)")
        path = Path(p.path).expanduser()
        if not path.exists():
            raise VgfError(f"{path}: no such file or folder (prompts.path)")
        return Inputs(files={} if path.is_dir() else {"source": path}, info={"source": "file", "path": path})

    def key_config(self, cfg, inputs: Inputs) -> dict:
        from vgfcli.config import to_dict

        key = {k: v for k, v in to_dict(cfg.prompts).items() if k != "path"}
        if inputs.info["source"] == "demo":
            return key | {"seed": cfg.seed}
        if "source" not in inputs.files:  # a datasets folder: its files' digests stand for it
            from vgfcli.llm.keys import folder_digest

            key["folder"] = folder_digest(inputs.info["path"])
        return {k: v for k, v in key.items() if not k.startswith("demo_")}

    def run(self, cfg, inputs: Inputs, run, ui) -> StageResult:
        from vgfcli.llm import prompts as P

        p = cfg.prompts
        if inputs.info["source"] == "demo":
            from vgfcli.llm.corpus import demo_rows

            with ui.status("making the demo prompt set from the corpus"):
                train, val = P.hash_split(demo_rows(p.demo_rows, p.demo_rule, cfg.seed), p.val_fraction)
            where = "the demo set"
        else:
            path = inputs.info["path"]
            where = str(path)
            with ui.status(f"reading {path}"):
                raw, raw_val = P.read_rows(path)
            fields = {"prompt": p.prompt_field, "reference": p.reference_field, "chosen": p.chosen_field,
                      "rejected": p.rejected_field}
            if p.split_field is not None:
                fields_split = P.column_split(raw, p.split_field, where)
                train, val = (P.canonical_rows(rows, fields, where) if rows else [] for rows in fields_split)
            elif raw_val is not None:
                train, val = P.canonical_rows(raw, fields, where), P.canonical_rows(raw_val, fields, f"{where} (val)")
            else:
                train, val = P.hash_split(P.canonical_rows(raw, fields, where), p.val_fraction)
        if not val:
            raise VgfError(f"{where}: no held-out prompts (raise prompts.val_fraction or give a val split)")
        if not train:
            raise VgfError(f"{where}: every prompt is held out: no training rows")
        out = run.staging / "prompts.jsonl"
        val_out = run.staging / "val_prompts.jsonl"
        P.write_jsonl(train, out)
        P.write_jsonl(val, val_out)
        summary = {"source": where, "train_prompts": len(train), "val_prompts": len(val),
                   "with_reference": sum("reference" in r for r in train),
                   "preference_pairs": sum("chosen" in r for r in train)}
        metrics = {k: float(v) for k, v in summary.items() if isinstance(v, int)}
        return StageResult(outputs={"prompts": out, "val_prompts": val_out}, metrics=metrics, summary=summary)

    def render(self, outcome: Outcome):
        return summary_table(f"ingest (prompts): {outcome.summary.get('source')}", outcome.summary)


STAGE = IngestPromptsStage()
