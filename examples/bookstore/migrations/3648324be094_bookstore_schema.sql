-- revision: 3648324be094
-- parents:
-- message: the bookstore schema: authors, books, tags, book_tags

-- migrate:up
CREATE TABLE "authors" (
    "id" bigserial NOT NULL,
    "name" text NOT NULL,
    "born" integer,
    CONSTRAINT "authors_pkey" PRIMARY KEY ("id")
);
CREATE TABLE "books" (
    "id" bigserial NOT NULL,
    "author_id" bigint NOT NULL,
    "title" text NOT NULL,
    "year" integer NOT NULL,
    "price" double precision NOT NULL,
    CONSTRAINT "books_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "books_author_id_fkey" FOREIGN KEY ("author_id") REFERENCES "authors" ("id") ON DELETE NO ACTION
);
CREATE TABLE "tags" (
    "id" bigserial NOT NULL,
    "name" text NOT NULL,
    CONSTRAINT "tags_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "tags_name_key" UNIQUE ("name")
);
CREATE TABLE "book_tags" (
    "book_id" bigint NOT NULL,
    "tag_id" bigint NOT NULL,
    CONSTRAINT "book_tags_pkey" PRIMARY KEY ("book_id", "tag_id"),
    CONSTRAINT "book_tags_book_id_fkey" FOREIGN KEY ("book_id") REFERENCES "books" ("id") ON DELETE NO ACTION,
    CONSTRAINT "book_tags_tag_id_fkey" FOREIGN KEY ("tag_id") REFERENCES "tags" ("id") ON DELETE NO ACTION
);
CREATE INDEX "books_author_id_idx" ON "books" ("author_id");
CREATE INDEX "book_tags_tag_id_idx" ON "book_tags" ("tag_id");

-- migrate:down
DROP TABLE "book_tags";
DROP TABLE "tags";
DROP TABLE "books";
DROP TABLE "authors";
