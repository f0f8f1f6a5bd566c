"""Loaders that turn other people's clinical data into `protocols.Case` objects.

Each is usable from a cluster spec as an import string with keyword arguments, e.g.
`cases = "cases.loaders.agentclinic:load"` and
`cases_args = { path = "../shared/data/agentclinic/medqa.jsonl" }`:

| import string | argument | returns |
|---|---|---|
| `cases.loaders.agentclinic:load` | `path` (OSCE JSONL) | `list[Case]` |
| `cases.loaders.mimic:load_mimic_iii` | `directory` (MIMIC-III CSV folder) | `list[Case]` |
| `cases.loaders.mimic:load_mimic_iv` | `directory` (MIMIC-IV folder with `hosp/`) | `list[Case]` |
| `cases.loaders.fhir:load_bundle` | `path` (one FHIR R4 Bundle JSON) | `list[Case]` |
| `cases.loaders.fhir:load_bundles` | `directory` (folder of bundles) | `list[Case]` |
| `cases.loaders.synthea:load_csv` | `directory` (Synthea `csv/` export) | `list[Case]` |
| `cases.loaders.ddxplus:load` | `directory` (DDXPlus release JSONs) | `DDXPlusOntology` |

A broken file raises `cases.jsonl.CaseFileError` naming the file, the line or record, and the field.
Imports only `protocols`, `cases`, msgspec and the standard library.
"""

from cases.jsonl import CaseFileError
from cases.loaders.agentclinic import load as load_agentclinic
from cases.loaders.ddxplus import DDXPlusOntology, case_from_evidences
from cases.loaders.ddxplus import load as load_ddxplus
from cases.loaders.fhir import load_bundle, load_bundles
from cases.loaders.mimic import load_mimic_iii, load_mimic_iv
from cases.loaders.synthea import load_csv as load_synthea_csv

__all__ = [
    "CaseFileError",
    "DDXPlusOntology",
    "case_from_evidences",
    "load_agentclinic",
    "load_bundle",
    "load_bundles",
    "load_ddxplus",
    "load_mimic_iii",
    "load_mimic_iv",
    "load_synthea_csv",
]
