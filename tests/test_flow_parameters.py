"""The Prefect UI's run form shows each flow parameter's description: every parameter of every deployable flow has
one (from the flow's docstring), and every deployment in deployments/prefect.yaml names a flow listed here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flows.build_index import build_index
from flows.bulk_query import bulk_query
from flows.duplicates import clean_duplicates
from flows.generate_samples import generate_samples
from flows.pipeline import pipeline

FLOWS = {"build_index": build_index, "bulk_query": bulk_query, "clean_duplicates": clean_duplicates,
         "generate_samples": generate_samples, "pipeline": pipeline}


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_every_flow_parameter_has_a_description(name):
    flow = FLOWS[name]
    properties = flow.parameters.properties
    assert properties, name
    missing = [p for p, schema in properties.items() if not (schema.get("description") or "").strip()]
    assert not missing, f"{name}: no description for {missing} (add them to the docstring's Args: section)"


def test_every_deployment_runs_a_flow_with_described_parameters():
    yaml = (Path(__file__).resolve().parents[1] / "deployments" / "prefect.yaml").read_text()
    entrypoints = re.findall(r"entrypoint:\s*flows/\w+\.py:(\w+)", yaml)
    assert entrypoints and set(entrypoints) <= set(FLOWS), entrypoints


def test_the_deployments_name_the_prefect_they_run_on():
    import prefect

    yaml = (Path(__file__).resolve().parents[1] / "deployments" / "prefect.yaml").read_text()
    assert re.search(r"^prefect-version:\s*(\S+)", yaml, re.M).group(1) == prefect.__version__
