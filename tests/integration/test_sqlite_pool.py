"""On SQLite a transaction takes the connection returned last: SQLite keeps a connection's
page cache only while no other connection has written since that connection's last
transaction, so connections taken in turn reloaded every page a write touched."""

from __future__ import annotations

from sqlalchemy import Connection, text

from loyalty.adapters.db.engine import make_engine


def _driver_connection(conn: Connection) -> object:
    return conn.connection.dbapi_connection


def test_the_connection_returned_last_is_taken_first(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'pool.db'}")
    first, second = engine.connect(), engine.connect()
    first_driver, second_driver = _driver_connection(first), _driver_connection(second)
    assert first_driver is not second_driver
    first.close()
    second.close()
    for _ in range(3):
        with engine.begin() as conn:
            assert _driver_connection(conn) is second_driver
            conn.execute(text("CREATE TABLE IF NOT EXISTS t (n INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
    engine.dispose()
