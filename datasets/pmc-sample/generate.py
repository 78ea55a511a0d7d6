#!/usr/bin/env python3
"""Writes the bundled pretraining sample: abstract-like biomedical paragraphs composed from
templates and term lists written for this project (no third-party text). Deterministic.

    python3 datasets/pmc-sample/generate.py      # -> train.txt, valid.txt

One paragraph per line. It is a stand-in corpus for `cargo xtask pretrain` with no
arguments; real runs use PMC papers (see README)."""
import random
from pathlib import Path

rng = random.Random(2304_14454)

CONDITIONS = ["type 2 diabetes", "hypertension", "chronic kidney disease", "heart failure",
              "atrial fibrillation", "asthma", "chronic obstructive pulmonary disease",
              "rheumatoid arthritis", "major depressive disorder", "Parkinson's disease",
              "sepsis", "community-acquired pneumonia", "osteoporosis", "psoriasis",
              "iron deficiency anaemia", "tuberculosis", "malaria", "migraine",
              "non-alcoholic fatty liver disease", "acute kidney injury"]
DRUGS = {"type 2 diabetes": ["metformin", "empagliflozin", "semaglutide"],
         "hypertension": ["amlodipine", "lisinopril", "chlorthalidone"],
         "chronic kidney disease": ["dapagliflozin", "finerenone", "losartan"],
         "heart failure": ["sacubitril-valsartan", "bisoprolol", "spironolactone"],
         "atrial fibrillation": ["apixaban", "rivaroxaban", "amiodarone"],
         "asthma": ["budesonide", "formoterol", "montelukast"],
         "chronic obstructive pulmonary disease": ["tiotropium", "umeclidinium", "roflumilast"],
         "rheumatoid arthritis": ["methotrexate", "tocilizumab", "baricitinib"],
         "major depressive disorder": ["sertraline", "escitalopram", "bupropion"],
         "Parkinson's disease": ["levodopa", "pramipexole", "rasagiline"],
         "sepsis": ["hydrocortisone", "norepinephrine", "piperacillin-tazobactam"],
         "community-acquired pneumonia": ["amoxicillin", "doxycycline", "ceftriaxone"],
         "osteoporosis": ["alendronate", "denosumab", "zoledronic acid"],
         "psoriasis": ["secukinumab", "adalimumab", "apremilast"],
         "iron deficiency anaemia": ["ferric carboxymaltose", "ferrous sulfate", "iron sucrose"],
         "tuberculosis": ["rifampicin", "isoniazid", "bedaquiline"],
         "malaria": ["artemether-lumefantrine", "artesunate", "primaquine"],
         "migraine": ["sumatriptan", "erenumab", "topiramate"],
         "non-alcoholic fatty liver disease": ["pioglitazone", "vitamin E", "resmetirom"],
         "acute kidney injury": ["balanced crystalloids", "furosemide", "renal replacement therapy"]}
OUTCOMES = ["all-cause mortality", "hospital admission", "HbA1c", "systolic blood pressure",
            "estimated glomerular filtration rate", "exacerbation rate", "quality of life",
            "length of stay", "pain scores", "bone mineral density", "viral load",
            "serum ferritin", "disease activity score", "relapse rate", "adverse events"]
DESIGNS = ["a randomised controlled trial", "a prospective cohort study", "a retrospective cohort study",
           "a case-control study", "a systematic review and meta-analysis", "a cross-sectional survey",
           "a pragmatic multicentre trial", "a nested case-control analysis"]
SETTINGS = ["primary care", "tertiary referral centres", "intensive care units", "community clinics",
            "rural district hospitals", "outpatient departments", "a national registry"]
MECHANISMS = {"empagliflozin": "inhibits the sodium-glucose cotransporter 2 in the proximal tubule",
              "dapagliflozin": "inhibits the sodium-glucose cotransporter 2 in the proximal tubule",
              "metformin": "reduces hepatic gluconeogenesis",
              "amlodipine": "blocks L-type calcium channels in vascular smooth muscle",
              "spironolactone": "antagonises the mineralocorticoid receptor",
              "finerenone": "antagonises the mineralocorticoid receptor",
              "tocilizumab": "blocks the interleukin-6 receptor",
              "baricitinib": "inhibits Janus kinases 1 and 2",
              "denosumab": "binds RANK ligand and suppresses osteoclast activity",
              "semaglutide": "agonises the glucagon-like peptide-1 receptor",
              "apixaban": "inhibits factor Xa", "rivaroxaban": "inhibits factor Xa",
              "sertraline": "selectively inhibits serotonin reuptake",
              "escitalopram": "selectively inhibits serotonin reuptake",
              "bedaquiline": "inhibits mycobacterial ATP synthase",
              "levodopa": "is converted to dopamine in the brain",
              "sumatriptan": "agonises serotonin 5-HT1B and 5-HT1D receptors",
              "erenumab": "blocks the calcitonin gene-related peptide receptor",
              "secukinumab": "neutralises interleukin-17A",
              "adalimumab": "neutralises tumour necrosis factor alpha"}
SECTIONS = ["Background", "Methods", "Results", "Conclusions"]


def pct(lo, hi):
    return f"{rng.uniform(lo, hi):.1f}%"


def ci(x):
    lo, hi = x * rng.uniform(0.7, 0.95), x * rng.uniform(1.05, 1.3)
    return f"{x:.2f} (95% CI {lo:.2f} to {hi:.2f})"


def abstract():
    cond = rng.choice(CONDITIONS)
    drug, comparator = rng.sample(DRUGS[cond], 2)
    outcome, secondary = rng.sample(OUTCOMES, 2)
    design, setting = rng.choice(DESIGNS), rng.choice(SETTINGS)
    n = rng.randint(80, 12000)
    age = rng.randint(35, 78)
    women = pct(20, 70)
    follow = rng.choice(["6 months", "12 months", "2 years", "3.5 years", "5 years", "28 days"])
    hr = rng.uniform(0.55, 1.25)
    p = rng.choice(["p<0.001", "p=0.002", "p=0.03", "p=0.04", "p=0.21", "p=0.48"])
    parts = [
        f"Background: {cond.capitalize()} remains a leading cause of morbidity, and the effect of "
        f"{drug} on {outcome} in {setting} is uncertain."
        + (f" {drug.capitalize()} {MECHANISMS[drug]}." if drug in MECHANISMS else ""),
        f"Methods: We conducted {design} of {n} adults (mean age {age} years, {women} women) with "
        f"{cond} treated in {setting}, comparing {drug} with {comparator}. The primary outcome was "
        f"{outcome}; {secondary} was a secondary outcome. Patients were followed for {follow}.",
        f"Results: {drug.capitalize()} was associated with a hazard ratio for {outcome} of {ci(hr)} "
        f"({p}). {secondary.capitalize()} changed by {rng.uniform(-15, 15):.1f} units, and adverse "
        f"events occurred in {pct(2, 30)} of patients receiving {drug} and {pct(2, 30)} of those "
        f"receiving {comparator}.",
        f"Conclusions: In patients with {cond}, {drug} "
        + ("reduced " + outcome if hr < 0.9 else "did not clearly change " + outcome)
        + f" compared with {comparator}. "
        + rng.choice(["Larger trials are needed to confirm these findings.",
                      "These results support current guideline recommendations.",
                      "Adherence and cost should be considered in clinical practice.",
                      "Long-term safety data remain limited."]),
    ]
    return " ".join(parts)


def write(path, count):
    path.write_text("\n".join(abstract() for _ in range(count)) + "\n")


here = Path(__file__).parent
write(here / "train.txt", 320)
write(here / "valid.txt", 32)
for f in ("train.txt", "valid.txt"):
    print(f, (here / f).stat().st_size // 1024, "KiB")
