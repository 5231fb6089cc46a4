"""The GraphQL surface: types and scalars (`types`), error codes (`errors`),
and the assembled schema (`root.SCHEMA`). Nothing here talks to Redis."""
