"""Pure-torch building blocks: perceptrons and critic ensembles, flow matching, VGF particle transport."""

from vgfcli.nn.flow import FlowPolicy, euler_sample, flow_matching_loss, linear_path
from vgfcli.nn.networks import MLP, EnsembleCritic
from vgfcli.nn.particles import svgd_direction, transport, value_grad

__all__ = [
    "MLP", "EnsembleCritic", "FlowPolicy", "euler_sample", "flow_matching_loss", "linear_path",
    "svgd_direction", "transport", "value_grad",
]
