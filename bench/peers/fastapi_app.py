"""The peer of aorm-httpd: the same HTTP API on FastAPI + SQLAlchemy asyncio + asyncpg, on uvicorn.

Built the way FastAPI's and SQLAlchemy's guides tell a Python developer to: one AsyncSession per
request from a dependency, declarative models, pydantic response models (orm_mode), selectinload
for the author's books and their tags, the unit of work for PATCH, Jinja2 templates for /fortunes,
a cache-aside Redis cache (redis.asyncio) for /cached-queries, and `uvicorn --workers N` with
uvloop and httptools (what `uvicorn[standard]` installs) as the deployment guide says.

Debian packages (scripts/bootstrap --httpd-bench): python3-fastapi, python3-uvicorn,
python3-uvloop, python3-httptools, python3-jinja2, python3-sqlalchemy (1.4), python3-asyncpg,
python3-redis.

Run (from the repository root, inside `scripts/sandbox run --schema`):
    /usr/bin/python3 -m uvicorn fastapi_app:app --app-dir bench/peers --host 127.0.0.1 --port 8081 \\
        --workers 2 --loop uvloop --http httptools --no-access-log
Settings (environment): PEER_DSN (postgresql+asyncpg://USER[:PASSWORD]@HOST:PORT/DB), else
AORM_TEST_DSN (a libpq conninfo: host, port, dbname, user, passfile, sslmode, sslrootcert are
understood); PEER_POOL (connections per worker, default 20); AORM_TEST_REDIS (host:port) with
AORM_TEST_REDIS_USER / AORM_TEST_REDIS_PASSWORD for /cached-queries.

The endpoints and their answers are those of examples/httpd (its README): errors are
{"error": "message"} with 400 (malformed input), 404, 409 (unique violation), 422 (foreign-key
violation).
"""
import os
import random
import ssl
from pathlib import Path as FilePath
from typing import List, Optional

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, StrictInt, StrictStr
import redis.asyncio as aioredis
from sqlalchemy import BigInteger, Column, Float, ForeignKey, Integer, Table, Text, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import declarative_base, relationship, selectinload, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

# ---------------------------------------------------------------- settings


def conninfo_to_url(conninfo):
    """(url, connect_args) for SQLAlchemy's asyncpg dialect from a libpq conninfo string."""
    kv = dict(item.split("=", 1) for item in conninfo.split())
    host = kv.get("host", "127.0.0.1")
    port = kv.get("port", "5432")
    user = kv.get("user", "postgres")
    db = kv.get("dbname", user)
    password = None
    if "passfile" in kv:
        for line in FilePath(kv["passfile"]).read_text().splitlines():
            fields = line.split(":")
            if len(fields) == 5 and fields[3] in ("*", user):
                password = fields[4]
                break
    connect_args = {}
    if kv.get("sslmode", "disable") != "disable":
        ctx = ssl.create_default_context(cafile=kv.get("sslrootcert"))
        ctx.check_hostname = kv.get("sslmode") == "verify-full"
        connect_args["ssl"] = ctx
    if password is not None:
        connect_args["password"] = password
    return f"postgresql+asyncpg://{user}@{host}:{port}/{db}", connect_args


if os.environ.get("PEER_DSN"):
    DSN, CONNECT_ARGS = os.environ["PEER_DSN"], {}
else:
    DSN, CONNECT_ARGS = conninfo_to_url(os.environ.get("AORM_TEST_DSN", "host=127.0.0.1 user=postgres"))
POOL = int(os.environ.get("PEER_POOL", "20"))

engine = create_async_engine(DSN, pool_size=POOL, max_overflow=0, connect_args=CONNECT_ARGS)
async_session = sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)

redis_client = None
if os.environ.get("AORM_TEST_REDIS"):
    _rhost, _rport = os.environ["AORM_TEST_REDIS"].rsplit(":", 1)
    redis_client = aioredis.Redis(host=_rhost, port=int(_rport),
                                  username=os.environ.get("AORM_TEST_REDIS_USER") or None,
                                  password=os.environ.get("AORM_TEST_REDIS_PASSWORD") or None)
CACHE_PREFIX = "aorm:peer:world:"  # the sandbox's Redis user may only touch aorm:* keys

templates = Jinja2Templates(directory=str(FilePath(__file__).with_name("templates")))

# ---------------------------------------------------------------- models (bench/schema.sql, bench/techempower.sql)

Base = declarative_base()

book_tags = Table("book_tags", Base.metadata,
                  Column("book_id", BigInteger, ForeignKey("books.id"), primary_key=True),
                  Column("tag_id", BigInteger, ForeignKey("tags.id"), primary_key=True))


class Author(Base):
    __tablename__ = "authors"
    id = Column(BigInteger, primary_key=True)
    name = Column(Text, nullable=False)
    born = Column(Integer)
    books = relationship("Book", back_populates="author", lazy="raise", order_by="Book.id")


class Book(Base):
    __tablename__ = "books"
    id = Column(BigInteger, primary_key=True)
    author_id = Column(BigInteger, ForeignKey("authors.id"), nullable=False)
    title = Column(Text, nullable=False)
    year = Column(Integer, nullable=False)
    price = Column(Float, nullable=False)
    author = relationship("Author", back_populates="books", lazy="raise")
    tags = relationship("Tag", secondary=book_tags, lazy="raise", order_by="Tag.id")


class Tag(Base):
    __tablename__ = "tags"
    id = Column(BigInteger, primary_key=True)
    name = Column(Text, nullable=False)


class World(Base):
    __tablename__ = "world"
    id = Column(Integer, primary_key=True)
    randomnumber = Column(Integer, nullable=False)


class Fortune(Base):
    __tablename__ = "fortune"
    id = Column(Integer, primary_key=True)
    message = Column(Text, nullable=False)

# ---------------------------------------------------------------- schemas (pydantic)


class TagOut(BaseModel):
    id: int
    name: str

    class Config:
        orm_mode = True


class BookOut(BaseModel):
    id: int
    author_id: int
    title: str
    year: int
    price: float

    class Config:
        orm_mode = True


class BookWithTags(BookOut):
    tags: List[TagOut]


class AuthorOut(BaseModel):
    id: int
    name: str
    born: Optional[int]
    books: List[BookWithTags]

    class Config:
        orm_mode = True


class BookPage(BaseModel):
    books: List[BookOut]
    next: Optional[int]


class BookIn(BaseModel):
    id: Optional[StrictInt] = None
    author_id: StrictInt
    title: StrictStr
    year: StrictInt
    price: float
    tag_ids: List[StrictInt] = []


class BookPatch(BaseModel):
    author_id: Optional[StrictInt]
    title: Optional[StrictStr]
    year: Optional[StrictInt]
    price: Optional[float]


class Created(BaseModel):
    id: int

# ---------------------------------------------------------------- the app


app = FastAPI()


async def get_session():
    async with async_session() as session:
        yield session


@app.exception_handler(StarletteHTTPException)
async def http_error(request: Request, exc: StarletteHTTPException):
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)


@app.exception_handler(RequestValidationError)
async def validation_error(request: Request, exc: RequestValidationError):
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
    return JSONResponse({"error": f"{where}: {first['msg']}"}, status_code=400)


def integrity_error(exc: IntegrityError, what: str):
    """409 for a unique violation, 422 for a foreign-key violation: asyncpg's error (the DBAPI
    error's cause) carries the SQLSTATE, the message and the constraint."""
    pg = exc.orig.__cause__
    sqlstate = getattr(pg, "sqlstate", None)
    status = {"23505": 409, "23503": 422}.get(sqlstate, 400)
    body = {"error": f"{what}: {getattr(pg, 'message', str(exc.orig))}", "sqlstate": sqlstate}
    if getattr(pg, "constraint_name", None):
        body["constraint"] = pg.constraint_name
    return JSONResponse(body, status_code=status)


@app.on_event("shutdown")
async def shutdown():
    await engine.dispose()
    if redis_client is not None:
        await redis_client.close()

# ---- the bookstore


@app.get("/authors/{author_id}", response_model=AuthorOut)
async def get_author(author_id: int = Path(gt=0), session: AsyncSession = Depends(get_session)):
    result = await session.execute(select(Author).where(Author.id == author_id)
                                   .options(selectinload(Author.books).selectinload(Book.tags)))
    author = result.scalar_one_or_none()
    if author is None:
        raise HTTPException(404, "no such author")
    return author


@app.get("/books", response_model=BookPage)
async def list_books(author_id: Optional[int] = Query(None, gt=0), limit: int = 20, after: int = 0,
                     session: AsyncSession = Depends(get_session)):
    if not 1 <= limit <= 100:
        raise HTTPException(400, "limit must be between 1 and 100")
    query = select(Book).where(Book.id > after).order_by(Book.id).limit(limit)
    if author_id is not None:
        query = query.where(Book.author_id == author_id)
    books = (await session.execute(query)).scalars().all()
    return BookPage(books=books, next=books[-1].id if len(books) == limit else None)


@app.get("/books/{book_id}", response_model=BookOut)
async def get_book(book_id: int = Path(gt=0), session: AsyncSession = Depends(get_session)):
    book = await session.get(Book, book_id)
    if book is None:
        raise HTTPException(404, "no such book")
    return book


@app.post("/books", status_code=201, response_model=Created)
async def create_book(body: BookIn, session: AsyncSession = Depends(get_session)):
    tags = []
    if body.tag_ids:
        tags = (await session.execute(select(Tag).where(Tag.id.in_(body.tag_ids)))).scalars().all()
        if len(tags) != len(set(body.tag_ids)):
            unknown = sorted(set(body.tag_ids) - {t.id for t in tags})
            raise HTTPException(422, f"unknown tag id {unknown[0]}")
    book = Book(id=body.id, author_id=body.author_id, title=body.title, year=body.year,
                price=body.price, tags=tags)
    session.add(book)
    try:
        await session.commit()
    except IntegrityError as exc:
        return integrity_error(exc, "create book")
    return Created(id=book.id)


@app.patch("/books/{book_id}", response_model=BookOut)
async def patch_book(body: BookPatch, book_id: int = Path(gt=0), session: AsyncSession = Depends(get_session)):
    book = await session.get(Book, book_id)
    if book is None:
        raise HTTPException(404, "no such book")
    for field, value in body.dict(exclude_unset=True).items():
        if value is None:
            raise HTTPException(400, f"{field}: may not be null")
        setattr(book, field, value)
    try:
        await session.commit()
    except IntegrityError as exc:
        return integrity_error(exc, "update book")
    return book


@app.delete("/books/{book_id}", status_code=204)
async def delete_book(book_id: int = Path(gt=0), session: AsyncSession = Depends(get_session)):
    # the tags are loaded so that the unit of work deletes the book's book_tags rows too
    book = await session.get(Book, book_id, options=[selectinload(Book.tags)])
    if book is None:
        raise HTTPException(404, "no such book")
    await session.delete(book)
    await session.commit()
    return Response(status_code=204)

# ---- the TechEmpower tests


def clamp_queries(value: Optional[str]) -> int:
    """The TechEmpower rule: missing or not a number -> 1, then clamped to 1..500."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        return 1
    return min(max(n, 1), 500)


def world_json(world):
    return {"id": world.id, "randomNumber": world.randomnumber}


@app.get("/json")
async def hello_json():
    return {"message": "Hello, World!"}


@app.get("/plaintext", response_class=PlainTextResponse)
async def plaintext():
    return "Hello, World!"


@app.get("/db")
async def single_query(session: AsyncSession = Depends(get_session)):
    world = await session.get(World, random.randint(1, 10000))
    return world_json(world)


@app.get("/queries")
async def multiple_queries(queries: Optional[str] = None, session: AsyncSession = Depends(get_session)):
    # one SELECT per row, even for an id seen before in this request (session.get would answer
    # a repeated id from the identity map without a statement)
    worlds = []
    for _ in range(clamp_queries(queries)):
        result = await session.execute(select(World).where(World.id == random.randint(1, 10000)))
        worlds.append(world_json(result.scalar_one()))
    return worlds


@app.get("/fortunes")
async def fortunes(request: Request, session: AsyncSession = Depends(get_session)):
    rows = list((await session.execute(select(Fortune))).scalars().all())
    rows.append(Fortune(id=0, message="Additional fortune added at request time."))
    rows.sort(key=lambda f: f.message)
    return templates.TemplateResponse("fortunes.html", {"request": request, "fortunes": rows})


@app.get("/updates")
async def updates(queries: Optional[str] = None, session: AsyncSession = Depends(get_session)):
    # every row read first, then changed: a change made between the reads would be flushed by
    # the next read (autoflush), one UPDATE at a time in the order drawn, and two requests
    # locking rows in different orders deadlock; the unit of work flushes in primary-key order
    worlds = []
    for _ in range(clamp_queries(queries)):
        result = await session.execute(select(World).where(World.id == random.randint(1, 10000)))
        worlds.append(result.scalar_one())
    for world in worlds:
        world.randomnumber = random.randint(1, 10000)
    await session.commit()  # one UPDATE per changed row, in one executemany
    if redis_client is not None:
        await redis_client.delete(*{CACHE_PREFIX + str(w.id) for w in worlds})
    return [world_json(w) for w in worlds]


@app.get("/cached-queries")
async def cached_queries(count: Optional[str] = None, queries: Optional[str] = None,
                         session: AsyncSession = Depends(get_session)):
    """Cache-aside: MGET the rows from Redis, load the misses in one SELECT, SET them back."""
    if redis_client is None:
        raise HTTPException(503, "no cache configured (AORM_TEST_REDIS)")
    ids = [random.randint(1, 10000) for _ in range(clamp_queries(count if count is not None else queries))]
    cached = await redis_client.mget([CACHE_PREFIX + str(i) for i in ids])
    numbers = {i: int(v) for i, v in zip(ids, cached) if v is not None}
    missing = {i for i in ids if i not in numbers}
    if missing:
        rows = (await session.execute(select(World).where(World.id.in_(missing)))).scalars().all()
        async with redis_client.pipeline(transaction=False) as pipe:
            for world in rows:
                numbers[world.id] = world.randomnumber
                pipe.set(CACHE_PREFIX + str(world.id), world.randomnumber)
            await pipe.execute()
    return [{"id": i, "randomNumber": numbers[i]} for i in ids]
