"""The Lightning side of the kit, and only that: the three LightningModules (BridgePretrainModule,
JointFlowModule, ProgressiveInferenceModule), the training callbacks, strategies and step checkpoints, and the
runner that puts a Trainer together (`nami pretrain-bridge`, `nami train`)."""

from .bridge_pretrain import BridgePretrainModule
from .joint_flow import JointFlowModule, NonFiniteError

__all__ = ["BridgePretrainModule", "JointFlowModule", "NonFiniteError"]
