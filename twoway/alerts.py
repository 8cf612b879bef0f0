"""``twoway alerts create BLOCK``: the automations of prefect.yaml, created on the Prefect
server with a saved notification block.

``prefect deploy`` creates deployments, not automations, and an automation's notification
names its block by id, which a file in git cannot know: this command reads the
automations under ``definitions.automations`` in prefect.yaml, puts the block's id into
their notifications and creates them, replacing automations of the same name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from twoway.errors import DefinitionError

PROJECT_FILE = Path("prefect.yaml")


def automation_specs(project: Path = PROJECT_FILE) -> list[dict[str, Any]]:
    """The automations written in the project file, as Prefect's automation model takes them."""
    try:
        raw = yaml.safe_load(project.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DefinitionError(f"{project}: cannot read it ({exc})") from None
    specs = ((raw or {}).get("definitions") or {}).get("automations")
    if not isinstance(specs, list) or not specs:
        raise DefinitionError(f"{project}: definitions.automations lists no automation")
    return specs


def create_alerts(block: str, project: Path = PROJECT_FILE) -> list[tuple[str, str]]:
    """Create (or replace) the project's automations, notifying through the saved block
    ``block`` (``TYPE-SLUG/NAME``); returns (name, id) of each."""
    from prefect.blocks.core import Block
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    try:
        notifier = Block.load(block)
    except (ValueError, TypeError) as exc:
        raise DefinitionError(f"--block {block!r}: no saved block of that name ({exc})") from None
    created = []
    with get_client(sync_client=True) as client:
        for spec in automation_specs(project):
            for action in spec.get("actions", []):
                if action.get("type") == "send-notification":
                    action["block_document_id"] = str(notifier._block_document_id)
            automation = AutomationCore.model_validate(spec)
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
            created.append((automation.name, str(client.create_automation(automation))))
    return created
