"""Lightning side of the kit: modules (BridgePretrain, JointFlow), pipeline, callbacks, strategies, runner."""

from .bridge_pretrain import BridgePretrainModule
from .joint_flow import JointFlowModule, NonFiniteError
from .pipeline import Pipeline, SampleResult

__all__ = ["BridgePretrainModule", "JointFlowModule", "NonFiniteError", "Pipeline", "SampleResult"]
