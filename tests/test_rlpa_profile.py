"""RLPA profiles: schema + JSON, the coherent seeded generator, fixed splits, JSONL loading, groups."""

import json

import pytest

from fairalign.envs.rlpa import (
    LIST_SLOTS,
    SLOTS,
    Profile,
    canonical_slot,
    coerce_inferred,
    generate_profiles,
    get_profiles,
    load_profiles_jsonl,
    profile_group,
    save_profiles_jsonl,
    split_profiles,
)
from fairalign.envs.rlpa import generator as gen


def test_schema_and_json_round_trip():
    assert len(SLOTS) == 10 and LIST_SLOTS == {"Interests", "Personality Traits", "Other"}
    p = Profile(age=34, gender="female", interests=("hiking", "chess"), occupation="nurse",
                personality_traits=("calm",), location="Oslo", other=("has a dog",), id="x1")
    d = p.to_dict()
    assert list(d) == ["Age", "Gender", "Interests", "Personality Traits", "Occupation", "Location", "Other"]
    assert d["Interests"] == ["hiking", "chess"] and d["Age"] == 34
    assert Profile.from_json(p.to_json()) == p  # equality ignores the id
    assert Profile.from_json(p.to_json(include_id=True)).id == "x1"
    # 1 (age) + 1 + 2 + 1 + 1 + 1 + 1 items
    assert len(p.items()) == 8
    assert ("Interests", "chess") in p.items() and ("Age", "34") in p.items()
    assert hash(p) == hash(Profile.from_dict(d))


def test_loose_slot_names_and_coercion():
    assert canonical_slot("marital_status") == "Marital Status"
    assert canonical_slot(" PERSONALITY-traits ") == "Personality Traits"
    assert canonical_slot("hobbies") is None and canonical_slot(3) is None
    p = Profile.from_dict({"age": "41", "family_background": "only child", "interests": "golf"})
    assert p.age == 41 and p.family_background == "only child" and p.interests == ("golf",)
    with pytest.raises(ValueError, match="unknown slot 'hobbies'; valid slots: Age"):
        Profile.from_dict({"hobbies": ["x"]})
    with pytest.raises(ValueError, match="'Age' must be an integer"):
        Profile.from_dict({"Age": "thirty"})
    with pytest.raises(ValueError, match="no items"):
        Profile.from_dict({"Interests": []})


def test_coerce_inferred_never_raises_and_drops_junk():
    raw = {"age": 30, "Interests": ["hiking", None, {"x": 1}, "unknown", 7], "occupation": "N/A",
           "Location": ["Paris", "Lyon"], "favorite color": "blue", "Gender": True}
    assert coerce_inferred(raw) == {"Age": ["30"], "Interests": ["hiking", "7"], "Location": ["Paris", "Lyon"]}
    for junk in (None, [], "text", 3, [{"Age": 3}]):
        assert coerce_inferred(junk) == {}


def test_generator_is_seeded_distinct_and_sized():
    a = generate_profiles(300, seed=5)
    assert generate_profiles(300, seed=5) == a
    assert [p.id for p in a] == [f"p{i:05d}" for i in range(300)]
    assert generate_profiles(300, seed=6) != a
    everything = get_profiles("all")
    assert len(everything) == 3000 and len(set(everything)) == 3000
    with pytest.raises(ValueError, match="n must be >= 1"):
        generate_profiles(0)


def test_generator_coherence():
    for p in get_profiles("all"):
        occ = {o[0]: o for o in gen.OCCUPATIONS}[p.occupation]
        _, cat, lo, hi, edus = occ
        assert lo <= p.age <= hi, p
        assert p.education in edus and gen.EDUCATION_MIN_AGE[p.education] <= p.age, p
        assert p.age <= gen.EDUCATION_MAX_AGE.get(p.education, 200), p
        weights = dict(zip(gen.MARITAL, gen._marital_weights(p.age)))
        assert weights[p.marital_status] > 0, p
        fam_rules = dict(gen.FAMILY)
        assert fam_rules[p.family_background](p.age, p.marital_status, p.occupation), p
        other_rules = dict(gen.OTHER)
        assert all(other_rules[o](p.age, p.marital_status, p.occupation) for o in p.other), p
        traits = set(p.personality_traits)
        assert not any(pair <= traits for pair in gen.CONFLICTING_TRAITS), p
        assert 2 <= len(p.interests) <= 4 and len(set(p.interests)) == len(p.interests)
        if p.age < 18:
            assert p.marital_status == "single"
        if p.occupation == "stay-at-home parent":
            assert p.family_background in gen.CHILD_FAMILIES
        if p.occupation == "farmer":
            assert p.location in gen.RURAL
        assert 12 <= len(p.items()) <= 16


def test_fixed_splits_are_disjoint_and_stable():
    train, test = get_profiles("train"), get_profiles("test")
    assert len(train) == 2700 and len(test) == 300
    assert not {p.id for p in train} & {p.id for p in test}
    assert get_profiles("test") == test and [p.id for p in get_profiles("test")] == [p.id for p in test]
    t2, s2 = split_profiles(get_profiles("all"), 0.1, seed=0)
    assert [p.id for p in s2] == [p.id for p in test]
    with pytest.raises(ValueError, match="split must be one of train, test, all"):
        get_profiles("valid")
    with pytest.raises(ValueError, match="test_fraction"):
        split_profiles(train, 1.5)


def test_jsonl_round_trip_and_line_numbered_errors(tmp_path):
    profs = generate_profiles(5, seed=1)
    path = tmp_path / "profiles.jsonl"
    save_profiles_jsonl(profs, path)
    back = load_profiles_jsonl(path)
    assert back == profs and [p.id for p in back] == [p.id for p in profs]

    good = json.dumps({"Age": 30, "Occupation": "nurse"})
    cases = {
        "bad json": (f"{good}\n\n{{not json\n", 3, "invalid JSON"),
        "not object": (f"{good}\n[1, 2]\n", 2, "must be a JSON object"),
        "unknown slot": (f'{good}\n{good}\n{good}\n{{"Hobby": "x"}}\n', 4, "unknown slot 'Hobby'"),
        "bad type": ('{"Interests": {"a": 1}}\n', 1, "must be a list of strings"),
    }
    for name, (text, line, msg) in cases.items():
        bad = tmp_path / f"{name.replace(' ', '_')}.jsonl"
        bad.write_text(text)
        with pytest.raises(ValueError) as e:
            load_profiles_jsonl(bad)
        assert f"{bad}: line {line}:" in str(e.value) and msg in str(e.value), name
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no profiles"):
        load_profiles_jsonl(empty)
    # ids default to <stem>-<line>
    mine = tmp_path / "mine.jsonl"
    mine.write_text(f"\n{good}\n")
    assert load_profiles_jsonl(mine)[0].id == "mine-2"


def test_profile_group():
    p = Profile(age=45, occupation="nurse", marital_status="married", interests=("Hiking", "chess"))
    assert profile_group(p) == "health"
    assert profile_group(p, "cluster") == "30-54/partnered"
    assert profile_group(Profile(age=22, marital_status="single"), "cluster") == "<30/unpartnered"
    assert profile_group(p, "Occupation") == "nurse"
    assert profile_group(p, "interests") == "chess|hiking"
    assert profile_group(p, "Location") == "unknown"
    # unknown occupations: keywords, then "other"
    assert profile_group(Profile(occupation="Senior Backend Developer")) == "tech"
    assert profile_group(Profile(occupation="retired pilot")) == "retired"
    assert profile_group(Profile(occupation="astronaut")) == "other"
    with pytest.raises(ValueError, match="by must be 'occupation_category', 'cluster' or a slot name"):
        profile_group(p, "job")
    cats = {profile_group(q) for q in get_profiles("all")}
    assert cats == set(gen.OCCUPATION_CATEGORIES)
    assert {profile_group(q, "cluster") for q in get_profiles("all")} >= {"<30/unpartnered", "55+/partnered"}
