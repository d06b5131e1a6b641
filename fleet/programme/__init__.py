"""The installation programme: each site's phases and classrooms, planned against actual.

`milestones` holds the ordering rules (pure), `models` the tables, `records` the writes,
`seed` the facts from site_configs/, `evidence` the confirmation from device readings,
`overview` what each site has reached and what is late, `queries` that standing as the API and
the programme page show it, `csv_records` the export and import, `timeline` the
planned-against-actual picture.
"""
