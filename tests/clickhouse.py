"""ClickHouse servers for the tests: each started from the system's `clickhouse-server` binary
with its own config, data and port in a temporary folder, and stopped at the end of the session.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{dir}/server.log</log><errorlog>{dir}/error.log</errorlog><console>0</console></logger>
    <tcp_port>{port}</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <mark_cache_size>{marks}</mark_cache_size>
    <uncompressed_cache_size>5368709</uncompressed_cache_size>
    <max_concurrent_queries>50</max_concurrent_queries>
    <users_config>{dir}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>{compression}
</yandex>
"""
# Parts written with zstd instead of lz4 (`Server(compression="zstd")`): smaller, e.g. random ids.
COMPRESSION = """
    <compression><case><min_part_size>0</min_part_size><min_part_size_ratio>0</min_part_size_ratio>
        <method>{method}</method></case></compression>"""
USERS = """<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>{memory}</max_memory_usage></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
        <profile>default</profile><quota>default</quota></default></users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
        <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
    </interval></default></quotas>
</yandex>
"""


def binary() -> str | None:
    return shutil.which("clickhouse-server") or shutil.which("clickhouse")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(
        self,
        folder: Path,
        *,
        memory: int = 1_000_000_000,
        marks: int = 5_368_709,
        compression: str = "",
    ) -> None:
        """`memory`: bytes a query may use; `marks`: the mark cache's bytes (the large-set
        benchmark, tests/bench/ch_large.py, wants more of both); `compression`: the parts'
        method ("zstd"; default lz4)."""
        self.folder = folder
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.xml").write_text(
            CONFIG.format(
                dir=folder,
                port=self.port,
                marks=marks,
                compression=COMPRESSION.format(method=compression) if compression else "",
            )
        )
        (folder / "users.xml").write_text(USERS.format(memory=memory))
        path = binary()
        assert path is not None
        command = [path, f"--config-file={folder / 'config.xml'}"]
        if Path(path).name == "clickhouse":
            command = [path, "server", f"--config-file={folder / 'config.xml'}"]
        self.process = subprocess.Popen(  # noqa: S603
            command,
            stdout=subprocess.DEVNULL,
            stderr=(folder / "stderr.log").open("wb"),
            cwd=folder,
        )
        self._wait()

    def _wait(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"clickhouse-server exited ({self.process.returncode}); see {self.folder}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"clickhouse-server did not listen on {self.port}; see {self.folder}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def store_rollups(tenant: Any) -> dict[tuple[Any, ...], list[int]]:
    """The ClickHouse store's hourly rollups of the tenant by key (buffers flushed, rows of a
    key summed, keys whose sums are all 0 left out); {} on another store."""
    from usage.eventstore.chrollups import buffers_flush, rollup_sums_by_key
    from usage.eventstore.clickhouse import ClickHouseStore
    from usage.eventstore.current import event_store

    store = event_store()
    if not isinstance(store, ClickHouseStore):
        return {}
    index = store.shard_of(tenant.pk)
    buffers_flush(store.connections, index)
    held = rollup_sums_by_key(store.connections, index, tenant.pk, 0, 2**32 - 1)
    return {key: values for key, values in held.items() if any(values)}


def assert_store_rollups_exact(tenant: Any) -> None:
    """On the ClickHouse store: its rollups equal, key by key (hour and every dimension), the
    sums of the tenant's events there now (each key's current version once)."""
    from usage.eventstore.chrollups import event_sums_by_key
    from usage.eventstore.clickhouse import ClickHouseStore
    from usage.eventstore.current import event_store

    store = event_store()
    if not isinstance(store, ClickHouseStore):
        return
    held = store_rollups(tenant)
    index = store.shard_of(tenant.pk)
    wanted = event_sums_by_key(store.connections, index, tenant.pk, 0, 2**32 - 1)
    assert held == wanted
