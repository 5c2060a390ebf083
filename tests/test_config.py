"""Settings: declared once, documented, layered defaults < TOML < environment < flags, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from coby.config import EXCHANGES, Settings, documented_settings
from coby.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_design_defaults():
    """The design's defaults: ten venues, $10 BTC and $1 ETH buckets, batch 1000, buffer 10000."""
    s = Settings.load(env={})
    assert s.exchanges == EXCHANGES and len(EXCHANGES) == 10
    assert s.bucket_size("BTC-USDT") == 10.0 and s.bucket_size("ETH-USDT") == 1.0
    assert (s.batch_write_size, s.data_buffer_size) == (1000, 10000)
    assert (s.api_host, s.api_port) == ("127.0.0.1", 8080)
    assert s.storage_url.startswith("sqlite:///") and s.cache_url is None


def test_precedence_defaults_toml_env_flags(tmp_path):
    """A TOML file overrides defaults, the environment overrides the file, flags override everything."""
    cfg = tmp_path / "coby.toml"
    cfg.write_text('api_port = 9000\nlog_level = "DEBUG"\nexchanges = ["binance", "gateio"]\n'
                   '[bucket_sizes]\nBTC = 25\n')
    s = Settings.load(cfg, env={})
    assert (s.api_port, s.log_level, s.exchanges) == (9000, "DEBUG", ("binance", "gate"))
    assert s.bucket_size("BTC-USDT") == 25.0
    s = Settings.load(cfg, env={"API_PORT": "9100"})
    assert s.api_port == 9100
    s = Settings.load(cfg, env={"API_PORT": "9100"}, api_port=9200)
    assert s.api_port == 9200


def test_environment_names_of_the_design():
    """DB_* build a PostgreSQL URL, REDIS_* a Redis URL; COBY_DB_URL / COBY_REDIS_URL win over them."""
    env = {"DB_HOST": "db", "DB_PORT": "6543", "DB_NAME": "md", "DB_USER": "u", "DB_PASSWORD": "p w",
           "REDIS_HOST": "cache", "REDIS_PORT": "6390"}
    s = Settings.load(env=env)
    assert s.storage_url == "postgresql://u:p%20w@db:6543/md"
    assert s.cache_url == "redis://cache:6390/0"
    s = Settings.load(env={**env, "COBY_DB_URL": "sqlite:///x.db", "COBY_REDIS_URL": "redis://r:1/2"})
    assert (s.storage_url, s.cache_url) == ("sqlite:///x.db", "redis://r:1/2")
    assert s.describe()["db_password"] == "***"


@pytest.mark.parametrize("kwargs, env, needle", [
    ({}, {"API_PORT": "eighty"}, "api_port"),
    ({}, {"API_PORT": "70000"}, "api_port"),
    ({"exchanges": "binance,ftx"}, {}, "ftx"),
    ({"symbols": "BTCUSDT"}, {}, "symbols"),
    ({"db_url": "mysql://x"}, {}, "db_url"),
    ({}, {"COBY_FLUSH_INTERVAL": "-1"}, "flush_interval"),
    ({}, {"COBY_FLUSH_INTERVAL": "nan"}, "flush_interval"),
    ({}, {"LOG_LEVEL": "LOUD"}, "log_level"),
    ({"batch_write_size": 20000}, {}, "batch_write_size"),
    ({}, {"COBY_BUFFER_FULL_POLICY": "explode"}, "buffer_full_policy"),
])
def test_invalid_settings_name_the_setting(kwargs, env, needle):
    """Every invalid value raises one ConfigError whose message names the setting."""
    with pytest.raises(ConfigError) as e:
        Settings.load(env=env, **kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unknown_or_broken_toml(tmp_path):
    """A typo in the config file is an error, not a silent default."""
    bad = tmp_path / "bad.toml"
    bad.write_text("api_prot = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'api_prot'"):
        Settings.load(bad, env={})
    bad.write_text("api_port = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.load(bad, env={})
    with pytest.raises(ConfigError, match="not found"):
        Settings.load(tmp_path / "missing.toml", env={})


def test_every_setting_is_documented_in_the_readme():
    """README's configuration table names every setting and its environment variables."""
    readme = (ROOT / "README.md").read_text()
    for name, _default, env, help_ in documented_settings():
        assert f"`{name}`" in readme, name
        for var in env:
            assert f"`{var}`" in readme, var
        assert help_


@pytest.mark.parametrize("name, env_var, pairs, json_form, toml, expected", [
    ("exchange_urls", "COBY_EXCHANGE_URLS", "*=http://127.0.0.1:8765,binance=https://b.example/x?a=b",
     '{"*": "http://127.0.0.1:8765", "binance": "https://b.example/x?a=b"}',
     '[exchange_urls]\n"*" = "http://127.0.0.1:8765"\nbinance = "https://b.example/x?a=b"\n',
     {"*": "http://127.0.0.1:8765", "binance": "https://b.example/x?a=b"}),
    ("symbol_map", "COBY_SYMBOL_MAP", "coinbase:BTC-USDT=BTC/USD,kraken:ETH-USDT=ETH/USD|XETHZUSD",
     '{"coinbase": {"BTC-USDT": "BTC/USD"}, "kraken": {"ETH-USDT": "ETH/USD|XETHZUSD"}}',
     '[symbol_map.coinbase]\n"BTC-USDT" = "BTC/USD"\n[symbol_map.kraken]\n"ETH-USDT" = "ETH/USD|XETHZUSD"\n',
     {"coinbase": {"BTC-USDT": "BTC/USD"}, "kraken": {"ETH-USDT": "ETH/USD|XETHZUSD"}}),
    ("bucket_sizes", "COBY_BUCKET_SIZES", "BTC=10,PEPE-USDT=0.000001",
     '{"BTC": 10, "PEPE-USDT": 0.000001}', '[bucket_sizes]\nBTC = 10\n"PEPE-USDT" = 0.000001\n',
     {"BTC": 10.0, "PEPE-USDT": 0.000001}),
])
def test_map_settings_accept_pairs_and_json_from_every_source(tmp_path, name, env_var, pairs, json_form, toml,
                                                              expected):
    """Every map-valued setting takes KEY=VALUE pairs or a JSON object, from the environment, a flag or
    the TOML file (as a table, or as either string form), and all forms give the same value."""
    cfg = tmp_path / "coby.toml"
    cfg.write_text(toml)
    assert getattr(Settings.load(cfg, env={}), name) == expected
    for text in (pairs, json_form, "  " + json_form + "\n"):
        assert getattr(Settings.load(env={env_var: text}), name) == expected, text
        assert getattr(Settings.load(env={}, **{name: text}), name) == expected, text
        cfg.write_text(f"{name} = '{text.strip()}'\n")
        assert getattr(Settings.load(cfg, env={}), name) == expected, text


@pytest.mark.parametrize("name, text, needle", [
    ("exchange_urls", '{"*": "http://x"', "not valid JSON"),
    ("exchange_urls", '["http://x"]', "JSON object"),
    ("exchange_urls", '{"*": 5}', "'*'"),
    ("exchange_urls", "http://x", "KEY=VALUE"),
    ("exchange_urls", "*=ftp://x", "http://"),
    ("symbol_map", '{"coinbase": "BTC/USD"}', "coinbase"),
    ("symbol_map", "BTC-USDT=BTC/USD", "VENUE:"),
    ("bucket_sizes", '{"BTC": "ten"}', "BTC"),
    ("bucket_sizes", "BTC=-1", "BTC"),
    ("bucket_sizes", "BTC", "KEY=VALUE"),
])
def test_malformed_map_settings_are_one_clear_error(name, text, needle):
    """A malformed map names the setting and what is wrong, on one line (the CLI exits 2 with it)."""
    with pytest.raises(ConfigError) as e:
        Settings.load(env={}, **{name: text})
    msg = str(e.value)
    assert name in msg and needle in msg and "\n" not in msg, msg
