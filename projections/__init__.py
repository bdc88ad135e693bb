"""What is true: pure folds over events, and SQL views for audit.

state = project(store, run_id)            # latest
state = project(store, run_id, upto=12)   # as it was at version 12
state.pipeline.phase, state.pipeline.tasks, state.orchestration.usage_by_model
"""

from projections.fold import EMPTY, RunState, apply, fold, project
from projections.orchestration import (
    Consultation,
    Decision,
    OrchestrationState,
    Usage,
    apply_orchestration,
)
from projections.pipeline import FileState, PhaseEntry, PipelineState, TaskState, apply_pipeline
from projections.sequence import Appended, PersistentMap
from projections.views import VIEWS, install_views

__all__ = [
    "EMPTY",
    "VIEWS",
    "Appended",
    "Consultation",
    "Decision",
    "FileState",
    "OrchestrationState",
    "PersistentMap",
    "PhaseEntry",
    "PipelineState",
    "RunState",
    "TaskState",
    "Usage",
    "apply",
    "apply_orchestration",
    "apply_pipeline",
    "fold",
    "install_views",
    "project",
]
