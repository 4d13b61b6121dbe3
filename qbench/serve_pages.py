"""The HTML of ``qbench serve``'s pages: Jinja2 templates rendered by Flask with autoescaping on
(every prompt, label, voter name and error text is escaped), one shared layout, no JavaScript
needed (plain forms and links; the browser test clicks them)."""
from __future__ import annotations

LAYOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>qbench serve: {{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
nav{background:#223;padding:8px 16px}nav a{color:#fff;margin-right:18px;text-decoration:none;font-weight:600}
nav a.on{text-decoration:underline}main{padding:12px 16px}
.cells{display:flex;flex-wrap:wrap;gap:14px}.cell{background:#fff;border:1px solid #ccc;padding:8px;width:200px}
.cell img{width:192px;height:192px;image-rendering:pixelated;display:block}
.cell.base{border-color:#27a}.small{font-size:12px;color:#555}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}th{background:#eee}
.pair{display:flex;gap:30px}.pair img{width:256px;height:256px;image-rendering:pixelated}
.err{background:#fee;border:1px solid #c33;padding:8px}.ok{background:#efe;border:1px solid #3a3;padding:6px}
.side{float:left;width:300px;margin-right:20px}.side li{font-size:12px;margin-bottom:3px}
button{padding:6px 16px;margin-right:8px;font-size:15px}form.inline{display:inline}
</style></head><body>
<nav><a href="{{ url_for('gallery') }}" class="{{ 'on' if page == 'gallery' }}">Gallery</a>
<a href="{{ url_for('arena') }}" class="{{ 'on' if page == 'arena' }}">Arena</a>
<a href="{{ url_for('try_it') }}" class="{{ 'on' if page == 'try' }}">Try it</a>
<span style="color:#aab;font-size:12px">store {{ db }}</span></nav>
<main>{% block body %}{% endblock %}</main></body></html>"""

ERROR = """{% extends "layout.html" %}{% block body %}<h2>{{ status }}</h2><p class="err" id="error">{{ message }}</p>{% endblock %}"""

GALLERY = """{% extends "layout.html" %}{% block body %}
<form method="get" action="{{ url_for('gallery') }}" id="filters">
model <select name="model">{% for m in g.models %}<option {{ 'selected' if m == g.model }}>{{ m }}</option>{% endfor %}</select>
settings <select name="group">{% for i in range(g.n_groups) %}<option value="{{ i }}" {{ 'selected' if i == g.group }}>group {{ i + 1 }}</option>{% endfor %}</select>
configuration contains <input name="q" value="{{ g.q }}" size="12">
worst first by <select name="metric"><option value="">(prompt order)</option>
{% for m in g.metrics %}<option {{ 'selected' if m == g.metric }}>{{ m }}</option>{% endfor %}</select>
<button type="submit" id="apply">show</button></form>
<p class="small">settings: {{ g.settings }}</p>
<div class="side"><b>{{ 'worst prompts by ' ~ g.metric if g.metric else 'prompts' }}</b> ({{ g.n_prompts }} in all)<ol>
{% for i, text, v in g.worst %}<li><a class="prompt-link" href="{{ url_for('gallery', model=g.model, group=g.group, metric=g.metric or '', q=g.q, prompt=i) }}">{{ text }}</a>
{% if v is not none %} <span class="small">{{ '%.4g' % v }}</span>{% endif %}</li>{% endfor %}</ol></div>
<div><h3 id="prompt">{{ g.prompt_text }}</h3><p class="small">prompt {{ g.prompt_id }}, seed {{ g.seed }}; difference maps: |image − {{ g.base_label }}|, mean over RGB, magma from 0 to 0.1</p>
<div class="cells">{% for c in g.cells %}<div class="cell {{ 'base' if c.is_base }}"><b>{{ c.label }}</b>{% if c.is_base %} (baseline){% endif %}
<img alt="{{ c.label }}" src="{{ url_for('image', run_id=c.run, index=g.prompt) }}">
{% if not c.is_base %}<img alt="difference of {{ c.label }}" class="diff" src="{{ url_for('diff', run_id=c.run, base_id=g.base, index=g.prompt) }}">{% endif %}
<table>{% for m, v in c.metrics|dictsort %}<tr><td>{{ m }}</td><td>{{ '%.4g' % v }}</td></tr>{% endfor %}</table>
<span class="small">run {{ c.run[-6:] }}</span></div>{% else %}<p>no configuration matches the filter</p>{% endfor %}</div></div>
{% endblock %}"""

RATINGS = """<table id="{{ tid }}"><tr><th>configuration</th><th>rating (Elo scale)</th><th>95 % interval</th><th>votes</th><th>W / L / T</th></tr>
{% for row in rows %}<tr><td>{{ row.label }}</td><td>{{ '%.0f' % row.rating if row.rating is not none else '-' }}</td>
<td>{% if row.lo is not none %}[{{ '%.0f' % row.lo }}, {{ '%.0f' % row.hi }}]{% else %}-{% endif %}</td><td>{{ row.votes }}</td>
<td>{{ row.wins }} / {{ row.losses }} / {{ row.ties }}</td></tr>{% endfor %}</table>"""

ARENA = """{% extends "layout.html" %}{% block body %}
{% if stored %}<p class="ok" id="stored">vote stored: {{ stored }}</p>{% endif %}
{% if not voter %}<form method="get" action="{{ url_for('arena') }}"><p>Your name (stored with each vote):
<input name="voter" id="voter" maxlength="64" required> <input type="hidden" name="model" value="{{ model }}">
<button type="submit" id="start">start voting</button></p></form>
{% elif pair %}<p>Voter <b id="voter-name">{{ voter }}</b>. Which image matches the prompt better?</p>
<h3 id="prompt">{{ pair.prompt }}</h3><div class="pair">
<div><img alt="left" id="img-a" src="{{ url_for('pair_image', token=pair.token, side='a') }}"><br>left</div>
<div><img alt="right" id="img-b" src="{{ url_for('pair_image', token=pair.token, side='b') }}"><br>right</div></div>
<form method="post" action="{{ url_for('vote') }}" id="vote-form"><input type="hidden" name="token" value="{{ pair.token }}">
<input type="hidden" name="voter" value="{{ voter }}">
<button name="winner" value="a" id="vote-a">left is better</button><button name="winner" value="tie" id="vote-tie">tie</button>
<button name="winner" value="b" id="vote-b">right is better</button></form>
<p class="small">the two configurations are shown in random order and named only after the vote</p>
{% else %}<p class="err">{{ why }}</p>{% endif %}
<h3>Ratings: arena votes ({{ model }}; voters: {{ arena_voters|join(", ") or "none yet" }})</h3>{% with rows=people, tid='people' %}""" + RATINGS + """{% endwith %}
{% for name, rows in judges %}<h3>Ratings: automatic judge {{ name }}</h3>{% with tid='judge-' ~ name %}""" + RATINGS + """{% endwith %}{% endfor %}
<p class="small">Bradley-Terry maximum likelihood (Hunter's MM, a tie is half a win), Elo scale 1000 + 400 log10 p;
95 % percentile bootstrap over votes (1000 resamples, seed 0).</p>
{% endblock %}"""

TRY = """{% extends "layout.html" %}{% block body %}
{% if not enabled %}<p class="err">live generation is off (qbench serve --no-try)</p>{% endif %}
<form method="post" action="{{ url_for('try_it') }}" id="try-form"><input type="hidden" name="model" value="{{ model }}">
<p>Prompt: <input name="prompt" id="try-prompt" size="60" maxlength="300" value="{{ prompt }}" required></p>
<p>{% for c in configs %}<label><input type="checkbox" name="run" value="{{ c.id }}" {{ 'checked' if c.id in chosen }}> {{ c.label }}</label> {% endfor %}</p>
<button type="submit" id="generate">generate</button></form>
{% if results %}<div class="cells" id="try-results">{% for r in results %}<div class="cell"><b>{{ r.label }}</b>
<img alt="{{ r.label }}" src="{{ url_for('try_image', try_id=r.id) }}"><span class="small">{{ r.how }}</span></div>{% endfor %}</div>{% endif %}
{% endblock %}"""

#: template name -> source; the ``.html`` names turn on Flask's autoescaping (flask.Flask.select_jinja_autoescape)
TEMPLATES = {"layout.html": LAYOUT, "error.html": ERROR, "gallery.html": GALLERY, "arena.html": ARENA, "try.html": TRY}
