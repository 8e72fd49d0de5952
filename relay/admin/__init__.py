"""The operations operators run — written once, shared by the CLI, the console, the
demo, the harness and the benches.

Pure business operations over the store: no Textual, no click, no printing. Each
takes an open store connection (the console runs them on its store thread) and
returns a typed result; a refusal is a :class:`relay.store.errors.InvalidInput` (or
another ``StoreError``) whose message is one line naming the fix, which every
surface already shows as such.

- :mod:`relay.admin.users`: create a user with a generated password shown once,
  reset a password, (de)activate, and the next-step nudges.
- :mod:`relay.admin.members`: import a member file (streamed).
- :mod:`relay.admin.verification`: send a code, confirm it, check DNS, approve.
- :mod:`relay.admin.campaigns`: create a campaign (sender checks, template parsing).
- :mod:`relay.admin.settings`: the client settings a list's users type into a mail client.
"""
