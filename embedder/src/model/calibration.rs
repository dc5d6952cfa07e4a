//! Texts run through the f32 model at load to measure activation ranges for INT8 (which input
//! channels stay f32, and smoothing where a scheme uses it).
//!
//! Outlier channels in BERT's activations are a property of the model, not of the input, so a
//! small varied sample finds them: questions, statements, code, numbers, other scripts, and a
//! longer passage. Deliberately none of the texts used by the tests or benchmarks.
pub const TEXTS: &[&str] = &[
    "What time does the pharmacy on Main Street close on Sundays?",
    "The committee postponed its decision until the auditors deliver their report.",
    "fn main() { println!(\"{}\", (1..=10).sum::<u32>()); }",
    "Order #48213 shipped on 2024-03-17 and weighs 2.75 kg.",
    "I absolutely loved the soundtrack, but the plot dragged in the second half!!!",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "¿Dónde está la estación de tren más cercana?",
    "Die Katze schläft auf dem warmen Fensterbrett.",
    "東京の天気は明日晴れるでしょう。",
    "Error: connection refused (ECONNREFUSED) while contacting 10.0.0.12:5432",
    "Buy two, get one free — offer valid through the end of the month.",
    "The defendant's counsel moved to dismiss on procedural grounds.",
    "ok",
    "Symptoms include fever, dry cough, fatigue and loss of taste or smell.",
    "SELECT name, count(*) FROM users GROUP BY name HAVING count(*) > 1;",
    "A quiet village nestled between the mountains and a slow green river.",
    "In 1969 the Apollo 11 mission landed the first humans on the Moon. Neil Armstrong \
     stepped onto the surface hours later, followed by Buzz Aldrin, while Michael Collins \
     orbited above in the command module. The landing was broadcast live to an audience of \
     hundreds of millions, and the samples they brought back are still studied today for \
     clues about the early history of the solar system.",
    "Reminder: stand-up moved to 9:45 tomorrow; bring the Q3 numbers.",
];
