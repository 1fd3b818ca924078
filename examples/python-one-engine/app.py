"""The seeds' FastAPI + SQLAlchemy (asyncpg) app, rewritten as ONE engine on ONE DATABASE_URL
that points at pgtier. No write engine, no read engine, no routing code: pgtier sends writes
to the primary, reads to the replicas, and keeps each user's reads after their writes fresh
(causal_scope = "user", the default).

The only hint the app gives is the one an ORM already has: read-only request handlers use a
read-only transaction (`postgresql_readonly=True` -> BEGIN READ ONLY), which pgtier may serve
from a replica. Every other transaction goes to the primary.

Run: DATABASE_URL=postgresql+asyncpg://user:pw@127.0.0.1:6432/app uvicorn app:app
"""

import os

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

DATABASE_URL = os.environ["DATABASE_URL"]

# The seeds' engine settings, kept as they were.
engine = create_async_engine(
    DATABASE_URL,
    pool_size=int(os.environ.get("POOL_SIZE", "10")),
    max_overflow=int(os.environ.get("MAX_OVERFLOW", "20")),
    pool_pre_ping=True,
    pool_recycle=300,
)
# Same pool, read-only transactions: what the seeds' read engine was for.
readonly = engine.execution_options(postgresql_readonly=True)

app = FastAPI()


class NewNote(BaseModel):
    author: str
    body: str


@app.on_event("startup")
async def migrate():
    async with engine.begin() as c:
        await c.execute(text(
            "CREATE TABLE IF NOT EXISTS notes (id bigserial PRIMARY KEY, author text NOT NULL, "
            "body text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
        ))


@app.get("/health")
async def health():
    async with readonly.connect() as c:
        await c.execute(text("SELECT 1"))
    return {"ok": True}


@app.post("/notes", status_code=201)
async def create_note(n: NewNote):
    async with engine.begin() as c:
        row = (await c.execute(
            text("INSERT INTO notes (author, body) VALUES (:a, :b) RETURNING id"),
            {"a": n.author, "b": n.body},
        )).one()
    return {"id": row.id}


@app.get("/notes/{note_id}")
async def get_note(note_id: int):
    async with readonly.connect() as c:
        row = (await c.execute(
            text("SELECT id, author, body, pg_is_in_recovery() AS replica FROM notes WHERE id = :id"),
            {"id": note_id},
        )).one_or_none()
    if row is None:
        raise HTTPException(404, "no such note")
    return {"id": row.id, "author": row.author, "body": row.body, "served_by_replica": row.replica}
