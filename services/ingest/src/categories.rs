//! Call-type text -> canonical category, for feeds that send free-form call types. Rules
//! are ordered from specific to general; the first keyword found wins. Feeds with their own
//! code tables get mapping files (see the ingest issue); this table is the fallback.

use hexcast_core::Category;

const RULES: &[(&[&str], &str)] = &[
    (&["CARDIAC", "CPR", "RESPIRATORY ARREST"], "medical.cardiac_arrest"),
    (&["SHOTS FIRED", "SHOTSPOTTER"], "crime.shots_fired"),
    (&["SHOOTING", "GUNSHOT"], "crime.shooting"),
    (&["STABBING", "CUTTING"], "crime.stabbing"),
    (&["HOSTAGE", "BARRICADE"], "crime.hostage"),
    (&["ROBBERY", "HOLDUP"], "crime.robbery"),
    (&["BURGLARY", "BREAKING AND ENTERING", "B&E"], "crime.burglary"),
    (&["VEHICLE BREAK", "AUTO BURGLARY", "CAR BREAK"], "crime.vehicle_break_in"),
    (&["STOLEN VEHICLE", "VEHICLE THEFT", "AUTO THEFT"], "crime.vehicle_theft"),
    (&["THEFT", "LARCENY", "SHOPLIFT"], "crime.theft"),
    (&["DOMESTIC"], "crime.domestic"),
    (&["ASSAULT", "FIGHT"], "crime.assault"),
    (&["ARSON"], "fire.arson"),
    (&["EXPLOSION"], "hazard.explosion"),
    (&["GAS LEAK", "GAS ODOR"], "hazard.gas_leak"),
    (&["HAZMAT", "HAZARDOUS"], "hazard.hazmat"),
    (&["VEHICLE FIRE"], "fire.vehicle"),
    (&["BRUSH FIRE", "GRASS FIRE", "WILDLAND"], "fire.wildland"),
    (&["FIRE ALARM"], "fire.alarm"),
    (&["BUILDING FIRE", "STRUCTURE FIRE", "HOUSE FIRE"], "fire.structure"),
    (&["FIRE"], "fire.other"),
    (&["VEHICLE ACCIDENT", "COLLISION", "CRASH"], "traffic.collision"),
    (&["DEAD PERSON", "DOA", "UNATTENDED DEATH"], "public.death_investigation"),
    (&["MISSING"], "public.missing_person"),
];

/// The category for a free-form call type; [`Category::UNKNOWN`] when nothing matches.
pub fn category_for(call_type: &str) -> Category {
    let upper = call_type.to_ascii_uppercase();
    RULES
        .iter()
        .find(|(keys, _)| keys.iter().any(|k| upper.contains(k)))
        .and_then(|(_, c)| Category::parse(c).ok())
        .unwrap_or(Category::UNKNOWN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specific_rules_win_over_general_ones() {
        assert_eq!(category_for("Fire: VEHICLE FIRE").as_str(), "fire.vehicle");
        assert_eq!(category_for("Fire: BUILDING FIRE").as_str(), "fire.structure");
        assert_eq!(category_for("EMS: CARDIAC EMERGENCY").as_str(), "medical.cardiac_arrest");
        assert_eq!(category_for("armed robbery").as_str(), "crime.robbery");
        assert_eq!(category_for("EMS: FALL VICTIM").as_str(), "other");
    }

    #[test]
    fn every_rule_names_a_taxonomy_category() {
        for (_, c) in RULES {
            assert!(Category::parse(c).is_ok(), "{c}");
        }
    }
}
