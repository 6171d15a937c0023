"""Generate Redline's injury dataset (no public labeled set exists; see models/data/INJURY_DATASHEET.md).

    python -m models.injury_data            # rewrites models/data/injury.jsonl (deterministic)

Rows are composed from hand-written parts: who, what happened, how bad, in which register
(news, first person, fiction, medical, sports, chat), explicit or implied. Negatives are mostly
hard: violent words used figuratively or technically, and near misses where nobody is hurt.
The held-out hard negatives in models/data/injury_hard_negatives.jsonl are written separately
and never enter training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "data" / "injury.jsonl"
SEED = 20261122

PEOPLE = ["my brother", "my sister", "a 34-year-old woman", "a 67-year-old man", "the goalkeeper", "the driver",
          "a cyclist", "a teenage hiker", "the child", "an elderly pedestrian", "a construction worker", "the nurse",
          "our neighbour", "my dad", "my grandmother", "the quarterback", "a tourist", "the chef", "a delivery rider",
          "the soldier", "a factory worker", "my roommate", "the climber", "a firefighter", "the jockey", "a student",
          "Maria", "Tom", "Aisha", "Kenji", "Lucas", "Priya", "Sam", "Olga", "Diego", "Fatima", "Ben", "Mei"]
MILD = ["twisted an ankle", "scraped a knee badly", "got a deep bruise on the thigh", "cut a finger slicing onions",
        "sprained a wrist", "burned a hand on the stove", "got stung and the arm swelled up", "pulled a hamstring",
        "chipped a tooth", "got a black eye", "split a lip", "got a nasty friction burn", "jammed a finger",
        "strained the lower back lifting boxes", "got a splinter deep under the nail that got infected"]
MODERATE = ["broke an arm", "fractured two ribs", "needed twelve stitches in the forehead", "dislocated a shoulder",
            "suffered a concussion", "tore an ACL", "was bitten by a dog and needed surgery on the hand",
            "broke a collarbone", "cracked a vertebra", "fractured a cheekbone", "ruptured an Achilles tendon",
            "was knocked unconscious", "broke a leg in two places", "suffered second-degree burns on both arms"]
SEVERE = ["was stabbed in the chest", "was shot in the leg", "suffered severe burns over half the body",
          "was critically injured", "lost three fingers", "suffered a spinal cord injury", "was left paralysed",
          "died of head injuries", "was crushed under a collapsed wall", "bled heavily from a deep gash in the neck",
          "had a leg amputated after the accident", "suffered a fractured skull", "was impaled on a metal rod",
          "lost an eye", "suffered internal bleeding", "was mauled by a bear"]
CAUSES = ["a fall from a ladder", "a car crash on the motorway", "a bar fight", "a skiing accident", "a workplace accident",
          "an explosion at the plant", "a collision with a bus", "a fall down the stairs", "a rock slide on the trail",
          "a knife attack", "a shooting outside the club", "a kitchen fire", "a tackle during the match",
          "a scaffolding collapse", "a horse riding accident", "an electric scooter crash", "a dog attack",
          "an earthquake", "a gas leak explosion", "a mugging"]
INJURY_NOUNS = ["a fractured femur", "multiple stab wounds", "a gunshot wound to the abdomen", "severe facial lacerations",
                "a broken wrist", "a head injury", "third-degree burns", "a dislocated hip", "two broken ribs",
                "a deep laceration on the forearm", "a crushed hand", "a torn knee ligament", "whiplash and a concussion",
                "a punctured lung", "a compound fracture of the tibia"]

NEWS = ["{P} {E} in {C}, police said.", "Officials said {P} {E} during {C} on Tuesday.",
        "{N} people were injured in {C}; one of them {E}.", "{P} was taken to hospital with {I} after {C}.",
        "Paramedics treated {P} for {I} at the scene of {C}.", "Witnesses said {P} {E} when the crowd surged.",
        "A man was arrested after {P} {E} in what police called {C}.",
        "The hospital confirmed that {P} remains in intensive care with {I}.",
        "Emergency services were called after {C} left {P} with {I}.",
        "{P} is recovering in hospital after {C}, relatives said.",
        "According to the fire service, {P} {E} and was flown to the trauma centre."]
FIRST = ["I {E1} yesterday and it still really hurts.", "Ugh, I {E1} at practice. Doctor says six weeks off.",
         "Long story short: {C}, and I {E1}.", "So I {E1} this morning, sitting in A&E now.",
         "Can't type much, I {E1} last night.", "Update from the ER: I {E1} but they say I'll recover.",
         "Not gonna lie, when I {E1} I nearly passed out from the pain.",
         "Well, that's my season over: I {E1}.", "PSA: wear proper boots. I {E1} and it was not fun.",
         "Mum, don't panic, but I {E1} on the way home.", "Day three on the sofa since I {E1}. Painkillers are my friends."]
FICTION = ["{name} staggered back, {wound}.", "The blade caught {name}'s forearm and {wound}.",
           "When the bridge gave way, {name} hit the rocks below and {wound}.",
           "{name} crawled out of the wreck, {wound}.", "The arrow struck {name} in the shoulder and {wound}.",
           "{name} screamed as the beam came down on {poss} legs, {wound}.",
           "Pain tore through {name}'s side; {name} sank to the floor, {wound}.",
           "{name} tried to stand, but the leg would not hold, {wound}."]
WOUNDS = ["blood soaking through the torn sleeve", "clutching the gash across the ribs",
          "one arm hanging at an impossible angle", "blood running into the eyes from a split scalp",
          "gasping around the broken ribs", "the bone showing white through the skin", "leaving a trail of blood",
          "barely conscious and bleeding from the ears", "the burned skin already blistering"]
MEDICAL = ["Patient presents with {I} sustained in {C}.", "Admitted with {I} following {C}; surgery scheduled.",
           "Triage note: {I}, mechanism of injury: {C}.", "X-ray confirms {I}. Splinted and referred to orthopaedics.",
           "Discharge summary: treated for {I} after {C}.",
           "ED note: {I}. Mechanism: {C}. Analgesia given, CT requested.",
           "Referral: patient sustained {I} during {C}; please review in fracture clinic."]
SPORTS = ["{A} was stretchered off after {SI}.", "{A} will miss the rest of the season after {SI}.",
          "Bad news for the club: {A} suffered {SI} in training.", "{A} limped off clutching the knee after {SI}.",
          "{A} was helped off the pitch after {SI}.", "Scans confirmed that {A} suffered {SI}.",
          "{A} needed lengthy treatment on the field after {SI} and could not continue.",
          "{A} is out for months after {SI}."]
ATHLETES = ["The striker", "Their star winger", "The point guard", "The defending champion", "The veteran prop",
            "The rookie quarterback", "The goalkeeper", "The sprinter", "The boxer", "The cyclist"]
SPORTS_INJ = ["a horror tackle that broke his leg", "a heavy fall that fractured her collarbone",
              "a collision that left him concussed", "a torn hamstring", "a dislocated shoulder in a scrum",
              "a clash of heads that needed stitches", "a ruptured Achilles"]
IMPLIED = ["She'll be in a cast for six weeks after the fall.", "He hasn't walked since the crash; they put pins in his leg.",
           "They say he may never see out of that eye again.", "The ambulance took her away and the carpet was soaked red.",
           "My son came home from school with his arm in a sling and a split lip.",
           "The surgeon said they had to remove part of his spleen after the beating.",
           "Grandpa's hip gave way on the ice and now he's waiting for a replacement.",
           "After the explosion they were still finding fragments in his back weeks later.",
           "She couldn't feel her legs after she landed.", "They wired his jaw shut after the fight.",
           "By the time the medics arrived he had lost a lot of blood.",
           "I woke up in hospital with staples in my head and no memory of the crash.",
           "The bite went right through his hand; he needed a tetanus shot and surgery.",
           "Her face was swollen and purple for a week after the mugging.",
           "He's on crutches again, third time this season.",
           "The burns on her arms needed skin grafts.", "They had to cut him out of the car with the jaws of life.",
           "My knee popped, and I went down and couldn't get up.", "The dog tore a chunk out of her calf.",
           "Two workers were hurt when the crane toppled.",
           "He'll be on crutches until Christmas after that tackle.", "The nurse said the stitches can come out next week.",
           "They kept her in overnight to watch the swelling on her brain.", "The cast finally comes off on Friday.",
           "He still can't grip anything since the machine caught his hand.",
           "She needed two blood transfusions after the crash.", "They found him at the bottom of the ravine, barely breathing.",
           "The referee stopped the fight because of the cut above his eye."]
CHAT_PROMPTS = ["", "", "", "What happened?", "How was your weekend?", "Tell me a story.", "Any news?",
                "Summarize today's headlines.", "Write a scene for my novel.", "How's the team doing?"]

FIGURATIVE = ["Just kill the process and restart the server.", "That comedian absolutely killed it last night.",
              "This new feature is a killer app for small teams.", "I shot a few photos of the sunset.",
              "Break a leg at your audition tonight!", "We're working on bleeding-edge GPU kernels.",
              "The market crashed and my portfolio is bleeding money.", "My laptop crashed twice during the demo.",
              "We need to cut costs by ten percent this quarter.", "She knocked it out of the park with that speech.",
              "The build is broken again on main.", "I'm heartbroken that the show got cancelled.",
              "I'm dying to see the new exhibition.", "This commute is killing me.", "Beat the eggs and fold in the flour.",
              "Chop the onions and slice the peppers thinly.", "The striker shot wide from twenty yards.",
              "I'll have a double shot of espresso.", "His ego was bruised after losing the debate.",
              "Let's hit the gym after work.", "The band blew the roof off the venue.", "Our team crushed the quarterly targets.",
              "Stab at the answer if you don't know it.", "Fire the cannon, the regatta has started!",
              "The startup burned through its funding in a year.", "Kill the lights when you leave.",
              "He took a shot at the title and missed.", "We got slaughtered in the pub quiz.",
              "The critics tore the film apart.", "She's a knockout in that dress.", "That exam murdered me.",
              "The deadline is a real pain in the neck.", "I nailed the presentation.", "The phone battery is dead.",
              "Git will kill the child process with SIGKILL.", "Terminate the thread and free the buffer.",
              "The patch fixes a crash when the parser hits a broken pipe.", "He blew up at his manager.",
              "Headshot! We won the match on the last round.", "The movie was a bloodbath at the box office.",
              "She cut him off mid-sentence.", "The price hike hurt sales.", "My pride took a hit.",
              "The goalkeeper made a stunning save.", "Slice the bread and toast it lightly.",
              "Punch in the numbers and hit enter.", "Strike while the iron is hot.", "I bombed the interview.",
              "We're bleeding users to the competitor.", "The heat wave is brutal this year.",
              "He fractured the coalition with that vote.", "The rupture in talks surprised everyone.",
              "A wounded economy needs time to recover.", "Don't shoot the messenger.",
              "The tennis final was a bruising five-set battle.", "Sharpen the knife before you carve the roast.",
              "The wrestler body-slammed his opponent in a scripted finale.", "The injured list for the game is empty.",
              "My fantasy team got destroyed this week.", "The scar on the hillside is from old mining."]
NEAR_MISS = ["The car skidded off the road but the driver walked away without a scratch.",
             "He tripped on the stairs but caught the railing and was fine.",
             "The fire was put out before anyone was hurt.", "No injuries were reported after the train derailed.",
             "The ladder slipped, but she jumped clear and landed on her feet.",
             "A tree fell across the road minutes after we had driven past.",
             "The knife slipped but missed his fingers by an inch.",
             "The climber fell but the rope held and she was unhurt.",
             "Both drivers were checked by paramedics and released uninjured.",
             "The dog barked and lunged but never touched him.", "The helmet cracked, but he didn't even get a bruise.",
             "The roof collapsed overnight while the building was empty.",
             "Firefighters rescued the family, all of whom were unharmed.",
             "The boxer took a punch but shook it off and won on points.",
             "The earthquake rattled windows but caused no casualties.",
             "She nearly burned herself on the pan but pulled her hand back in time.",
             "The player went down theatrically but got straight back up, unharmed.",
             "Security stopped the man before he could hurt anyone.", "The bull charged, but the rider escaped untouched.",
             "The surgeon's hands were steady throughout the routine check-up."]
NEUTRAL = ["The meeting has been moved to Thursday at 3 pm.", "Preheat the oven to 180 degrees.",
           "The train to Lyon leaves from platform 4.", "Your refund has been processed.",
           "The patient's blood pressure was normal at the follow-up.", "Drink plenty of fluids if you have the flu.",
           "The team won 3-1 with two late goals.", "Our quarterly revenue grew by eight percent.",
           "Remember to back up your files before upgrading.", "The museum is free on the first Sunday of the month.",
           "Water the tomatoes every other day in summer.", "The hike to the lake takes about two hours.",
           "Photosynthesis converts light into chemical energy.", "The recipe needs two cups of rice.",
           "Please restart your router and try again.", "The concert sold out in ten minutes.",
           "My daughter started piano lessons this week.", "The bill passed the senate by a narrow margin.",
           "We adopted a rescue cat named Biscuit.", "The forecast says rain all weekend.",
           "A blood donation takes about ten minutes.", "The dentist said my teeth look healthy.",
           "Vaccines are available at the clinic on weekdays.", "The marathon route passes the old harbour.",
           "Stretch before you run to warm up your muscles.", "The novel follows two sisters in 1920s Shanghai.",
           "The firm hired twelve new engineers.", "He fixed the leaking tap himself.", "The surgery waiting room has free wifi.",
           "She finished the race in under four hours and celebrated with friends."]


# Bodies and medicine with nobody hurt: check-ups, procedures, teaching, fitness. Without these the
# model learned "medical or anatomical words" as a sign of injury (a dental filling and an anatomy
# lecture were flagged in the held-out sets of v1.1.0).
ROUTINE_BODY = ["The hygienist scaled and polished my teeth and said my gums look healthy.",
                "The nurse gave me my booster jab; my arm was a little sore for an afternoon, as expected.",
                "My blood test came back fine, cholesterol slightly high.", "The optician says I need reading glasses.",
                "The physiotherapist gave me stretches to keep my shoulders flexible.",
                "The orthodontist tightened my braces this morning.", "She had a routine mammogram and everything was clear.",
                "Our biology class dissected a sheep's heart to see the four chambers.",
                "The textbook chapter explains how tendons attach muscle to bone.",
                "The skeleton model in the classroom has every vertebra labelled.",
                "The ultrasound showed a healthy baby kicking away.", "He donated a pint of blood at the community centre.",
                "The dermatologist checked my moles and found nothing to worry about.",
                "The cardiologist said my heart rhythm is perfectly normal.",
                "Medical students practised suturing on pig skin in the skills lab.",
                "The surgeon explained the knee replacement procedure at the open evening.",
                "The vet spayed our cat and she was bouncing around the next day.",
                "The anaesthetist ran through the checklist before the planned operation.",
                "My knee replacement from two years ago has healed beautifully and I hike again.",
                "Yoga stretches the hamstrings and strengthens the core.",
                "The massage therapist worked on the knots in my neck.",
                "The dentist took X-rays and said my wisdom teeth can stay.", "The hospital's new MRI scanner is twice as fast.",
                "The paediatrician measured my son's height and weight: right on the growth curve.",
                "Our first-aid course covered how to put someone in the recovery position.",
                "The physiology lecture covered how nerves carry signals to the muscles.",
                "The midwife said labour was progressing well and mother and baby are fine.",
                "He had his ears syringed and can hear properly again.",
                "The podiatrist trimmed my toenails and recommended better insoles.",
                "Blood pressure 118/76, pulse 64, no concerns at today's review."]
ROUTINE_FRAMES = ["{s}", "Quick update: {s}", "{s} Nothing else to report.", "Good news from the clinic. {s}"]

# Violent verbs in technical, business, kitchen and game language: composed so the model learns the
# pattern (an object, not a person, takes the hit) rather than a list of idioms.
TECH_VERBS = ["kill", "terminate", "shoot", "crash", "break", "cut", "slash", "burn", "bleed", "stab", "fire", "hit",
              "punch", "smash", "crush", "destroy", "blow up", "nuke", "murder", "slaughter", "strangle", "wound",
              "fracture", "chop", "hammer", "beat", "bury", "torch", "gut", "choke"]
TECH_OBJECTS = ["the stuck process", "the flaky test", "the old container", "the nightly build", "the marketing budget",
                "prices on winter coats", "the legacy service", "the cache", "the feature branch", "the backlog",
                "the onion", "the garlic", "the dough", "the steak", "the boss level", "the final raid", "the zombie horde",
                "the competition", "last year's record", "the bug count", "the database connection", "the cron job",
                "the stale cookies", "the deadline", "the opposing defence", "the ball into the net", "the mortgage rate",
                "the ad spend", "the server logs", "the pull request"]
TECH_FRAMES = ["Can you {v} {o} before the demo?", "We had to {v} {o} again this morning.", "Just {v} {o} and move on.",
               "Tip: {v} {o} first, then restart.", "I'm going to {v} {o} tonight.", "Let's {v} {o} by Friday.",
               "Don't forget to {v} {o}.", "Why did they {v} {o}?", "The script will {v} {o} automatically.",
               "Our plan is to {v} {o} this quarter."]
HARMLESS_DOMAINS = ["The quarterly numbers bled red for the third month.", "The quarterback was sacked twice but stayed in the game.",
                    "My phone screen is cracked again.", "The vase shattered on the kitchen floor.", "The printer is jammed.",
                    "The bridge was damaged in the storm but nobody was on it.", "The car was totalled; the driver was at home.",
                    "Our tent collapsed in the wind while we were at the lake.", "The laptop hinge snapped.",
                    "The storm ripped the roof off an empty barn.", "The boxer won by knockout and celebrated with his team.",
                    "In the video game, my character died three times on the last level.", "The recipe says to cut the chicken into cubes.",
                    "The surgeon's lecture covered the history of anaesthesia.", "He was wounded by the criticism.",
                    "The actress plays a ghost who was murdered in 1890.", "The documentary covers the history of boxing.",
                    "The blood test results came back normal.", "The nurse took my blood pressure and it was fine.",
                    "He has a cold and a sore throat.", "She's recovering well from the flu.", "The dog chewed up my shoes.",
                    "The glass broke but I swept it up before anyone stepped on it.", "Pipes burst in the empty office over the weekend."]


Row = dict[str, Any]  # text, label (0 or 1), category, group and prompt of one generated row


def _pos(rng: random.Random) -> Row:
    severity = rng.choice(["mild", "moderate", "severe"])
    events = {"mild": MILD, "moderate": MODERATE, "severe": SEVERE}[severity]
    event = rng.choice(events)
    kind = rng.choice(["news", "news", "first", "fiction", "medical", "sports", "implied"])
    fill = {"P": rng.choice(PEOPLE), "E": event, "C": rng.choice(CAUSES), "I": rng.choice(INJURY_NOUNS),
            "N": str(rng.randint(2, 14)), "E1": event.replace("was ", "got ").replace("an ", "my ", 1)
            .replace("a ", "my ", 1).replace(" the ", " my ", 1),
            "name": rng.choice([p for p in PEOPLE if p[0].isupper()]), "wound": rng.choice(WOUNDS),
            "poss": rng.choice(["his", "her", "their"]), "A": rng.choice(ATHLETES), "SI": rng.choice(SPORTS_INJ)}
    template = {"news": NEWS, "first": FIRST, "fiction": FICTION, "medical": MEDICAL, "sports": SPORTS,
                "implied": IMPLIED}[kind]
    frame = rng.randrange(len(template))  # same draw as rng.choice: the file stays byte-stable
    text = template[frame].format(**fill)
    uses_event = kind in ("news", "first")
    return {"text": text[0].upper() + text[1:], "label": 1, "category": f"{kind}:{severity}" if uses_event else kind,
            "group": f"{kind}:{frame}"}


def _neg(rng: random.Random) -> Row:
    kind = rng.choices(["figurative", "technical", "harmless", "near_miss", "neutral", "combo", "routine_body"],
                       weights=[2, 4, 2, 2, 1, 2, 2])[0]
    group = ""
    if kind == "figurative":
        text = rng.choice(FIGURATIVE)
    elif kind == "technical":
        frame = rng.randrange(len(TECH_FRAMES))
        text = TECH_FRAMES[frame].format(v=rng.choice(TECH_VERBS), o=rng.choice(TECH_OBJECTS))
        group = f"technical:{frame}"
    elif kind == "harmless":
        text = rng.choice(HARMLESS_DOMAINS)
    elif kind == "near_miss":
        text = rng.choice(NEAR_MISS)
    elif kind == "neutral":
        text = rng.choice(NEUTRAL)
    elif kind == "routine_body":
        sentence = rng.choice(ROUTINE_BODY)
        text = rng.choice(ROUTINE_FRAMES).format(s=sentence)
        group = "s:" + sentence
    else:  # two harmless sentences, so length alone never signals the class
        first = rng.choice(FIGURATIVE + NEUTRAL + HARMLESS_DOMAINS)
        text = f"{first} {rng.choice(NEAR_MISS + NEUTRAL)}"
        group = "s:" + first
    return {"text": text, "label": 0, "category": kind, "group": group or "s:" + text}


def generate(n_pos: int = 1800, n_neg: int = 2400) -> list[Row]:
    rng = random.Random(SEED)
    rows: dict[str, Row] = {}
    for maker, target in ((_pos, n_pos), (_neg, n_neg)):
        made, tries = 0, 0
        while made < target and tries < target * 50:
            tries += 1
            row = maker(rng)
            if row["text"] not in rows:
                row["prompt"] = rng.choice(CHAT_PROMPTS)
                rows[row["text"]] = row
                made += 1
    # Short positives paired with a harmless sentence: injury inside otherwise ordinary text.
    for text in list(t for t, r in rows.items() if r["label"] == 1)[:300]:
        combined = f"{rng.choice(NEUTRAL)} {text}"
        rows.setdefault(combined, {"text": combined, "label": 1, "category": "mixed", "prompt": "",
                                   "group": rows[text]["group"]})
    out = list(rows.values())
    rng.shuffle(out)
    return out


def main() -> None:
    rows = generate()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    pos = sum(r["label"] for r in rows)
    print(f"wrote {len(rows)} rows ({pos} injured, {len(rows) - pos} not) to {OUT}")


if __name__ == "__main__":
    main()
