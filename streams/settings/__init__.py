"""Settings of SomaAgent Streams: environment variables, validated once, in one section per area.

Importing this package has no side effects (Faust keeps its settings the same way, in
``faust/types/settings/``): streams and agents import the :class:`Settings` type from here, never the
app. Only :meth:`Settings.from_env` reads the environment; ``faust_app.py`` calls it once per process.
"""

from streams.settings.base import Section, SettingsError
from streams.settings.bridge import BridgeSettings
from streams.settings.conversation import ConversationSettings
from streams.settings.embeddings import EmbeddingSettings
from streams.settings.engine import EngineSettings
from streams.settings.kafka import KafkaSettings
from streams.settings.locks import LockSettings
from streams.settings.settings import SECTIONS, Settings
from streams.settings.usage import UsageSettings
from streams.settings.worker import WorkerSettings

__all__ = [
    "SECTIONS",
    "BridgeSettings",
    "ConversationSettings",
    "EmbeddingSettings",
    "EngineSettings",
    "KafkaSettings",
    "LockSettings",
    "Section",
    "Settings",
    "SettingsError",
    "UsageSettings",
    "WorkerSettings",
]
