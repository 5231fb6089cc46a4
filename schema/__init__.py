"""The GraphQL vocabulary: object types and scalars (`types`), error codes and what
clients may see of errors (`errors`). It imports nothing of ours: `resolvers` builds
these objects and assembles the schema (`resolvers.root`); nothing here knows Redis."""
