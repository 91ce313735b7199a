"""Code for the declarative operations that need it: one module per provider
(`hooks/<provider>.py`, dashes as underscores), named by an operation's `hook` in
`catalog/<provider>.yaml`. A request hook takes `(PreparedRequest, parameters)` and returns the
request to send; an output hook takes `(data, parameters)` and returns the node's output.
"""
