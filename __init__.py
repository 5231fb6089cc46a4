"""RAGline gateway: live RAGline events from Redis Streams to GraphQL subscriptions.

Installed, the repository's top-level folders are this one package, `ragline`
(`ragline.app`, `ragline.gateway`, `ragline.streaming`, `ragline.resolvers`,
`ragline.schema`), so nothing else of ours lands at the top of site-packages.
"""
