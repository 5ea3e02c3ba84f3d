"""Chat templates: one protocol, three sources (tokenizer, shipped JSON, user file), one renderer."""

from sftkit.core.errors import RowRejected, TemplateBlocked, TemplateError
from sftkit.core.vocab import MaskPolicy, Overflow
from sftkit.templates.base import ChatTemplate, Segment
from sftkit.templates.check import CheckReport, Finding, check_template
from sftkit.templates.hf import HFChatTemplate
from sftkit.templates.json_template import JSONTemplate
from sftkit.templates.registry import list_templates, load_template
from sftkit.templates.render import IGNORE, Rendered, Renderer, trained_spans

__all__ = [
    "IGNORE",
    "ChatTemplate",
    "CheckReport",
    "Finding",
    "HFChatTemplate",
    "JSONTemplate",
    "MaskPolicy",
    "Overflow",
    "Rendered",
    "Renderer",
    "RowRejected",
    "Segment",
    "TemplateBlocked",
    "TemplateError",
    "check_template",
    "list_templates",
    "load_template",
    "trained_spans",
]
