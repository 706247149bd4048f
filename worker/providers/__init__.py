"""The provider layer both lanes call: one module per provider (``openai``, ``gemini``,
``mistral``, ``compat``, ``mock``) behind the protocols in ``base``, one error policy and
one set of answer rules."""
