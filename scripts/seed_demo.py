"""Give the example stack something to back up (only if the demo databases are empty)."""

from __future__ import annotations

import os

import psycopg
import pymysql
import redis

pg_db = os.environ.get("DB_DATABASE", "genesis_demo")
with psycopg.connect(
    host=os.environ.get("DB_HOST", "127.0.0.1"),
    user=os.environ.get("DB_USERNAME", "postgres"),
    password=os.environ.get("DB_PASSWORD") or None,
    dbname="postgres",
    autocommit=True,
) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (pg_db,)).fetchone():
        conn.execute(f'CREATE DATABASE "{pg_db}"')
with psycopg.connect(
    host=os.environ.get("DB_HOST", "127.0.0.1"),
    user=os.environ.get("DB_USERNAME", "postgres"),
    password=os.environ.get("DB_PASSWORD") or None,
    dbname=pg_db,
    autocommit=True,
) as conn:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, customer text NOT NULL, total numeric(10,2), "
        "items jsonb, created_at timestamptz DEFAULT now())"
    )
    if conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0:
        conn.execute(
            "INSERT INTO orders (customer, total, items) SELECT 'customer-' || g, g * 1.5, "
            "jsonb_build_object('sku', 'SKU-' || g, 'qty', g % 7) FROM generate_series(1, 1000) g"
        )

my_db = os.environ.get("MYSQL_DATABASE", "genesis_demo")
conn = pymysql.connect(
    host=os.environ.get("MYSQL_HOST", "127.0.0.1"),
    user=os.environ.get("MYSQL_USERNAME", "root"),
    password=os.environ.get("MYSQL_PASSWORD", ""),
    autocommit=True,
)
with conn.cursor() as cur:
    cur.execute(f"CREATE DATABASE IF NOT EXISTS `{my_db}`")
    cur.execute(f"USE `{my_db}`")
    cur.execute(
        "CREATE TABLE IF NOT EXISTS customers (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100), email VARCHAR(200))"
    )
    cur.execute("SELECT COUNT(*) FROM customers")
    if cur.fetchone()[0] == 0:
        cur.executemany(
            "INSERT INTO customers (name, email) VALUES (%s, %s)",
            [(f"name {i}", f"user{i}@example.com") for i in range(500)],
        )
conn.close()

r = redis.Redis(host=os.environ.get("REDIS_HOST", "127.0.0.1"), port=int(os.environ.get("REDIS_PORT", 6379)))
if r.dbsize() == 0:
    r.mset({f"session:{i}": f"user-{i}" for i in range(200)})
    r.hset("config:app", mapping={"theme": "dark", "version": "1.0"})
print(f"demo: data ready in postgres/{pg_db}, mariadb/{my_db}, redis db0")
