"""aitp's configuration: built-in defaults < TOML file < `.env` in the working directory < environment.

- `schema`: the settings structs, the one place defaults live (`config/aitp.toml` mirrors them);
- `env_names`: every dotted key's type and the environment names it answers to;
- `loading`: `load_config`, which reads the layers, converts, checks and records each value's source;
- `redaction`: which values are secret, and the configuration with them blanked;
- `example`: the text of `.env.example`.
"""

from aitp.errors import ConfigError   # raised by load_config; importable from here, as before the split
from aitp.config.env_names import ENV_NAMES, GENERIC_ONLY_NAMES, KEY_TO_ENV, LEAF_TYPES, generic_env_name, leaf_types
from aitp.config.example import env_example
from aitp.config.loading import LoadedConfig, is_loopback, load_config, parse_dotenv
from aitp.config.redaction import REDACTED, REDIS_URL_KEYS, SECRET_KEYS, URL_KEYS, redacted_items, secret_values
from aitp.config.schema import (
    PLACEHOLDER_OPENAI_KEY,
    ApiSettings,
    AuthSettings,
    BatchingSettings,
    ChildPolicy,
    CoordinationSettings,
    ModelSettings,
    MonitoringSettings,
    NonNegative,
    NonNegativeSeconds,
    OllamaSettings,
    OpenAISettings,
    PollingSettings,
    Port,
    Positive,
    ProcessingSettings,
    RateLimitSettings,
    ResilienceSettings,
    Seconds,
    Settings,
    ShutdownSettings,
    StorageSettings,
    SupervisionSettings,
    TlsSettings,
    WikidataSettings,
    WorkerSettings,
)

__all__ = [
    "ConfigError",
    # schema
    "Settings", "ChildPolicy", "PLACEHOLDER_OPENAI_KEY",
    "ApiSettings", "AuthSettings", "BatchingSettings", "CoordinationSettings", "ModelSettings", "MonitoringSettings",
    "OllamaSettings", "OpenAISettings", "PollingSettings", "ProcessingSettings", "RateLimitSettings",
    "ResilienceSettings", "ShutdownSettings", "StorageSettings", "SupervisionSettings", "TlsSettings",
    "WikidataSettings", "WorkerSettings",
    "Positive", "NonNegative", "Seconds", "NonNegativeSeconds", "Port",
    # env_names
    "ENV_NAMES", "KEY_TO_ENV", "GENERIC_ONLY_NAMES", "LEAF_TYPES", "leaf_types", "generic_env_name",
    # loading
    "load_config", "LoadedConfig", "parse_dotenv", "is_loopback",
    # redaction
    "redacted_items", "secret_values", "SECRET_KEYS", "REDACTED", "URL_KEYS", "REDIS_URL_KEYS",
    # example
    "env_example",
]
