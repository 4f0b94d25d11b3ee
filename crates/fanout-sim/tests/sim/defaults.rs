//! The simulator's default behaviour (no scenario): a believable orchestrator, agents, item
//! workers and summaries, derived only from the request on the wire.

use serde_json::{Value, json};

use super::{chat, messages, start};
use fanout_sim::{SimConfig, SimHandle};

/// A planning request in fanout's words: rules in the system prompt, the task and the tree
/// view in the user turn, a forced `submit_plan` whose schema is the plan format.
fn plan_request(task: &str, files: &[&str]) -> Value {
    let system = "You are the orchestrator of the workflow `shop`. Decompose the task into independent sub-tasks, each run by one sub-agent with its own context, file scope, tools and model mode, and answer only by calling `submit_plan` once with the whole plan.\n\nRules:\n- `workflow` is `shop`. At most 100 sub-tasks; at most 10 run at once.\n- `task_id`: unique, letters, digits, `_`, `-`, `.`.\n- Never include protected paths: .git/**, **/.git/**, .fanout/**, .env, **/.env, **/.env.*, **/*.pem, **/id_rsa*.\n- `tools`: only what the agent needs, from read_file, write_file, edit_file, list_files, search, bash. Agents read and write only inside their scope.\n- Agents given `bash` must list in `shell_commands` the exact commands they will run; only these (with extra arguments) are allowed: `git status`, `npm test`.\n- Outbound network access is denied: never set `external_api`.\n- `mode`: `fast` for routine, high-volume work; `default` for hard reasoning. Work touching authentication, security or payments (**/auth/**, **/*auth*, **/*payment*) must be `default`.\n- `role` (optional): one of `subtasks_analysis` (default), `subtasks_codegen` (fast), `subtasks_test_gen` (fast).\n";
    let mut tree = format!(
        "Repository: {} files, 4.0 KB (paths relative to the root; .gitignore respected)\nDirectories (files, size):\nsrc/ 5 files, 2.0 KB\n",
        files.len()
    );
    tree.push_str("Files:\n");
    for file in files {
        tree.push_str(&format!("{file} 120 B\n"));
    }
    let subtask = json!({
        "type": "object", "additionalProperties": false,
        "required": ["task_id", "description", "scope", "tools", "mode", "depends_on"],
        "properties": {
            "task_id": {"type": "string"}, "description": {"type": "string"},
            "role": {"type": "string", "enum": ["subtasks_analysis", "subtasks_codegen", "subtasks_test_gen"]},
            "scope": {"type": "array", "items": {"type": "string"}},
            "write_scope": {"type": "array", "items": {"type": "string"}},
            "tools": {"type": "array", "items": {"type": "string", "enum": ["read_file", "write_file", "edit_file", "list_files", "search", "bash"]}},
            "shell_commands": {"type": "array", "items": {"type": "string"}},
            "mode": {"type": "string", "enum": ["fast", "default"]},
            "depends_on": {"type": "array", "items": {"type": "string"}},
            "external_api": {"type": "boolean"}
        }
    });
    json!({
        "model": "claude-test", "max_tokens": 64000, "system": system,
        "tools": [{"name": "submit_plan", "description": "Submit the plan.", "input_schema": {
            "type": "object", "additionalProperties": false, "required": ["workflow", "subtasks"],
            "properties": {"workflow": {"type": "string"},
                           "subtasks": {"type": "array", "minItems": 1, "maxItems": 100, "items": subtask}}}}],
        "tool_choice": {"type": "tool", "name": "submit_plan"},
        "messages": [{"role": "user", "content": format!("Task:\n{task}\n\n{tree}\nCall `submit_plan` with the plan.")}]
    })
}

fn tool_input(reply: &Value) -> Value {
    reply["content"]
        .as_array()
        .and_then(|blocks| blocks.iter().find(|b| b["type"] == "tool_use"))
        .map(|b| b["input"].clone())
        .unwrap_or_else(|| panic!("no tool_use in {reply}"))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|list| list.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_default_orchestrator_plans_one_agent_per_named_file_with_tests_after_code() {
    let sim = start(SimConfig::default()).await;
    let files = [
        ".env",
        "package.json",
        "src/auth/session.ts",
        "src/handlers/orders.ts",
        "src/handlers/users.ts",
    ];
    let request = plan_request(
        "Add input validation to every handler in src/handlers, check src/auth/session.ts, and add unit tests.",
        &files,
    );
    let reply = messages(&sim, request.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let plan = tool_input(&reply.json());
    assert_eq!(plan["workflow"], "shop");
    let subtasks = plan["subtasks"].as_array().cloned().unwrap_or_default();
    let by_id = |id: &str| {
        subtasks
            .iter()
            .find(|s| s["task_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no {id} in {plan}"))
    };
    let ids: Vec<&str> = subtasks
        .iter()
        .filter_map(|s| s["task_id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "add-session",
            "add-orders",
            "add-users",
            "test-session",
            "test-orders",
            "test-users",
            "run-tests"
        ],
        "{plan}"
    );
    // One file each, only allowed tools, nothing protected, sensitive work on default.
    assert_eq!(
        strings(&by_id("add-users")["scope"]),
        ["src/handlers/users.ts"]
    );
    assert_eq!(by_id("add-users")["mode"], "fast");
    assert_eq!(by_id("add-users")["role"], "subtasks_codegen");
    assert_eq!(by_id("add-session")["mode"], "default");
    assert!(by_id("add-session").get("role").is_none(), "{plan}");
    for subtask in &subtasks {
        for tool in strings(&subtask["tools"]) {
            assert!(
                [
                    "read_file",
                    "write_file",
                    "edit_file",
                    "list_files",
                    "search",
                    "bash"
                ]
                .contains(&tool)
            );
        }
        for scope in strings(&subtask["scope"]) {
            assert_ne!(scope, ".env");
        }
        for command in strings(&subtask["shell_commands"]) {
            assert_eq!(command, "npm test");
        }
    }
    // Tests after code, in their own files.
    let test = by_id("test-users");
    assert_eq!(strings(&test["depends_on"]), ["add-users"]);
    assert_eq!(
        strings(&test["write_scope"]),
        ["tests/handlers/users.test.ts"]
    );
    assert!(!strings(&test["tools"]).contains(&"bash"));
    // The suite runs once, after every test is written, changing nothing.
    let run = by_id("run-tests");
    assert_eq!(
        strings(&run["depends_on"]),
        ["test-session", "test-orders", "test-users"]
    );
    assert_eq!(strings(&run["shell_commands"]), ["npm test"]);
    assert_eq!(run["write_scope"], json!([]));

    // Deterministic.
    let again = tool_input(&messages(&sim, request).await.json());
    assert_eq!(again, plan);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_task_that_names_nothing_is_split_by_directory() {
    let sim = start(SimConfig::default()).await;
    let files = ["README.md", "docs/guide.md", "src/lib.rs", "src/main.rs"];
    let reply = messages(
        &sim,
        plan_request("Describe the task for the orchestrator here.", &files),
    )
    .await;
    let plan = tool_input(&reply.json());
    let scopes: Vec<Vec<&str>> = plan["subtasks"]
        .as_array()
        .map(|list| list.iter().map(|s| strings(&s["scope"])).collect())
        .unwrap_or_default();
    assert_eq!(
        scopes,
        [vec!["docs"], vec!["src"], vec!["README.md"]],
        "{plan}"
    );
    sim.shutdown().await;
}

fn agent_request(history: Vec<Value>) -> Value {
    let system = "You are one sub-agent of a larger workflow. Do only your task, then call report_result exactly once.\n\nTask test-users: Write unit tests for src/users.ts in tests/users.test.ts and run them with `npm test`.\n\nFiles you may change (nothing else):\n- src/users.ts\n- tests/users.test.ts\n\nTools: read_file, write_file, edit_file, bash\nCommands allowed in bash (with any further arguments):\n- git status\n- npm test\n\nRules:\n- Paths are relative to the repository root.\n";
    let tool = |name: &str, properties: Value| json!({"name": name, "description": name, "input_schema": {"type": "object", "properties": properties}});
    let mut messages = vec![
        json!({"role": "user", "content": "Write unit tests.\n\nWhen done, call report_result."}),
    ];
    messages.extend(history);
    json!({
        "model": "claude-test", "max_tokens": 4096, "system": system,
        "tools": [
            tool("read_file", json!({"path": {"type": "string"}})),
            tool("write_file", json!({"path": {"type": "string"}, "content": {"type": "string"}})),
            tool("edit_file", json!({"path": {"type": "string"}, "old_text": {"type": "string"}, "new_text": {"type": "string"}})),
            tool("bash", json!({"command": {"type": "string"}})),
            {"name": "report_result", "description": "Report.", "input_schema": {"type": "object",
                "properties": {"status": {"type": "string", "enum": ["success", "partial", "failure"]},
                               "summary": {"type": "string"},
                               "files_changed": {"type": "array", "items": {"type": "string"}}},
                "required": ["status", "summary", "files_changed"]}}
        ],
        "messages": messages
    })
}

/// One agent turn: the calls it made, answered by `answer`, appended to `history`.
async fn agent_turn(
    sim: &SimHandle,
    history: &mut Vec<Value>,
    answer: impl Fn(&str, &Value) -> (String, bool),
) -> Vec<(String, Value)> {
    let reply = messages(sim, agent_request(history.clone())).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    let content = body["content"].as_array().cloned().unwrap_or_default();
    let calls: Vec<(String, Value, String)> = content
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .map(|b| {
            (
                b["name"].as_str().unwrap_or_default().to_string(),
                b["input"].clone(),
                b["id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let results: Vec<Value> = calls
        .iter()
        .map(|(name, input, id)| {
            let (text, is_error) = answer(name, input);
            json!({"type": "tool_result", "tool_use_id": id, "content": text, "is_error": is_error})
        })
        .collect();
    history.push(json!({"role": "assistant", "content": content}));
    history.push(json!({"role": "user", "content": results}));
    calls.into_iter().map(|(n, i, _)| (n, i)).collect()
}

#[tokio::test]
async fn the_default_agent_reads_edits_tests_and_reports_exactly_what_it_changed() {
    let sim = start(SimConfig::default()).await;
    let tools = |name: &str, input: &Value| -> (String, bool) {
        let path = input["path"].as_str().unwrap_or_default();
        match (name, path) {
            ("read_file", "src/users.ts") => (
                "src/users.ts (lines 1-3 of 3):\n     1\timport x from 'y';\n     2\t}\n     3\t}\n"
                    .into(),
                false,
            ),
            ("read_file", _) => (format!("no such file or directory: {path}"), true),
            ("edit_file", _) => (format!("edited {path}"), false),
            ("write_file", _) => (format!("wrote 10 bytes to {path}"), false),
            ("bash", _) => ("exit status 0".into(), false),
            _ => ("unexpected".into(), true),
        }
    };
    let mut history = Vec::new();
    let turn1 = agent_turn(&sim, &mut history, tools).await;
    let names: Vec<(&str, &str)> = turn1
        .iter()
        .map(|(n, i)| (n.as_str(), i["path"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(
        names,
        [
            ("read_file", "src/users.ts"),
            ("read_file", "tests/users.test.ts")
        ]
    );
    let turn2 = agent_turn(&sim, &mut history, tools).await;
    assert_eq!(turn2.len(), 2, "{turn2:?}");
    let (edit, input) = &turn2[0];
    assert_eq!(edit, "edit_file");
    assert_eq!(input["old_text"], "import x from 'y';");
    assert_eq!(
        input["new_text"],
        "// fanout: reviewed by agent test-users (simulated edit)\nimport x from 'y';"
    );
    let (write, input) = &turn2[1];
    assert_eq!(write, "write_file");
    assert_eq!(input["path"], "tests/users.test.ts");
    let turn3 = agent_turn(&sim, &mut history, tools).await;
    assert_eq!(
        turn3,
        [("bash".to_string(), json!({"command": "npm test"}))]
    );
    let turn4 = agent_turn(&sim, &mut history, tools).await;
    let (report, input) = &turn4[0];
    assert_eq!(report, "report_result");
    assert_eq!(input["status"], "success");
    assert_eq!(
        strings(&input["files_changed"]),
        ["src/users.ts", "tests/users.test.ts"]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn the_default_agent_over_chat_completions_reports_a_refused_write_as_unchanged() {
    let sim = start(SimConfig::default()).await;
    let system = "Task fix-a: Fix src/a.py.\n\nFiles you may change (nothing else):\n- src/a.py\n\nTools: read_file, edit_file\n";
    let tools = json!([
        {"type": "function", "function": {"name": "read_file", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "edit_file", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "report_result", "parameters": {"type": "object", "properties": {"status": {"type": "string", "enum": ["success", "partial"]}, "summary": {"type": "string"}, "files_changed": {"type": "array", "items": {"type": "string"}}}}}}
    ]);
    let mut messages = vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": "Fix it."}),
    ];
    let mut last = Value::Null;
    for result in [
        "src/a.py (lines 1-1 of 1):\n     1\tprint(1)\n",
        "Error: denied: src/a.py: read-only",
    ] {
        let reply = chat(
            &sim,
            json!({"model": "gpt-test", "messages": messages, "tools": tools}),
        )
        .await
        .json();
        let message = reply["choices"][0]["message"].clone();
        let call = message["tool_calls"][0].clone();
        messages.push(message);
        messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": result}));
        last = call;
    }
    assert_eq!(last["function"]["name"], "edit_file");
    let reply = chat(
        &sim,
        json!({"model": "gpt-test", "messages": messages, "tools": tools}),
    )
    .await
    .json();
    let call = &reply["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "report_result");
    let input: Value = serde_json::from_str(call["arguments"].as_str().unwrap_or("{}")).unwrap();
    assert_eq!(input["files_changed"], json!([]));
    assert_eq!(input["status"], "partial");
    sim.shutdown().await;
}

#[tokio::test]
async fn item_records_take_their_values_from_the_items() {
    let sim = start(SimConfig::default()).await;
    let record = json!({"type": "object", "properties": {
        "id": {"type": "string"},
        "category": {"type": "string", "enum": ["billing", "login", "shipping", "other"]},
        "summary": {"type": "string", "maxLength": 60},
        "product": {"type": ["string", "null"]}
    }, "required": ["id", "category", "summary", "product"]});
    let prompt = "Triage.\n\n<item id=\"T-1\">\n{\"subject\": \"Parcel late\", \"body\": \"My shipping is three weeks late now.\", \"product\": \"Cards\"}\n</item>\n<item id=\"T-2\">\n{\"subject\": \"Locked out\", \"body\": \"The login code never arrives by SMS.\", \"product\": null}\n</item>\n<item id=\"T-3\">\nThe invoice charged us twice.\n</item>\n";
    let reply = messages(
        &sim,
        json!({
            "model": "claude-test", "max_tokens": 1000,
            "tools": [{"name": "submit_results", "input_schema": {"type": "object", "properties": {"results": {"type": "array", "items": record}}, "required": ["results"]}}],
            "tool_choice": {"type": "tool", "name": "submit_results"},
            "messages": [{"role": "user", "content": prompt}]
        }),
    )
    .await;
    let results = tool_input(&reply.json())["results"].clone();
    assert_eq!(results[0]["id"], "T-1");
    assert_eq!(results[0]["category"], "shipping");
    assert_eq!(results[0]["product"], "Cards");
    assert_eq!(
        results[0]["summary"],
        "Parcel late: My shipping is three weeks late now."
    );
    assert_eq!(results[1]["category"], "login");
    assert_eq!(results[1]["product"], Value::Null);
    // A word that suggests a category counts ("invoice" → billing); plain text items too.
    assert_eq!(results[2]["category"], "billing");
    assert_eq!(results[2]["summary"], "The invoice charged us twice.");
    sim.shutdown().await;
}

#[tokio::test]
async fn summaries_count_what_they_are_given() {
    let sim = start(SimConfig::default()).await;
    let text = |reply: &Value| {
        reply["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let run = messages(
        &sim,
        json!({"model": "claude-test", "max_tokens": 1024,
               "system": "You write the closing summary of a fanout run.",
               "messages": [{"role": "user", "content": "Workflow shop (3 sub-tasks).\n- a [success]: x\n- b [success]: y\n- c [rollback]: z\n"}]}),
    )
    .await
    .json();
    let summary = text(&run);
    assert!(
        summary.contains("3 agent(s): 1 rolled back, 2 succeeded."),
        "{summary}"
    );
    assert!(summary.contains("Review first: c."), "{summary}");
    assert!(!summary.contains("Simulated reply"), "{summary}");

    let parts = "Write a report.\n\nThe results to synthesise:\n\n<part n=\"1\">\n{\"id\":\"1\",\"category\":\"billing\"}\n</part>\n<part n=\"2\">\n{\"id\":\"2\",\"category\":\"billing\"}\n</part>\n<part n=\"3\">\n{\"id\":\"3\",\"category\":\"login\"}\n</part>\n";
    let items = messages(
        &sim,
        json!({"model": "claude-test", "max_tokens": 1024, "messages": [{"role": "user", "content": parts}]}),
    )
    .await
    .json();
    let summary = text(&items);
    assert!(summary.contains("Records: 3"), "{summary}");
    assert!(
        summary.contains("- **category**: billing 2, login 1"),
        "{summary}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn the_default_item_planner_sizes_chunks_and_proposes_fields_from_the_sample() {
    let sim = start(SimConfig::default()).await;
    let field = json!({"type": "object", "properties": {
        "name": {"type": "string"}, "type": {"type": "string", "enum": ["string", "integer", "number", "boolean"]},
        "description": {"type": "string"}, "values": {"type": "array", "items": {"type": "string"}},
        "nullable": {"type": "boolean"}}, "required": ["name", "type", "description"]});
    let schema = json!({"type": "object", "required": ["chunking", "chunk_size", "instructions", "rationale", "fields"],
        "properties": {
            "chunking": {"type": "string", "enum": ["fixed", "per_item", "token_budget"]},
            "chunk_size": {"type": "integer", "minimum": 1, "maximum": 200},
            "instructions": {"type": "string", "minLength": 1},
            "rationale": {"type": "string"},
            "fields": {"type": "array", "minItems": 1, "items": field}}});
    let mut prompt = String::from(
        "Task for every item:\nTriage each ticket: its category and how urgent it is.\n\nThe input has 40 item(s); 4 of them, spread over the input:\n",
    );
    for (id, subject, body, product) in [
        (
            "1",
            "Refund please",
            "I want a refund for last month.",
            "Cards",
        ),
        (
            "2",
            "Refund for order",
            "Please refund the double charge.",
            "Cards",
        ),
        (
            "3",
            "Cannot log in",
            "My password reset never arrives.",
            "POS",
        ),
        (
            "4",
            "Login loop",
            "I am locked out after the password change.",
            "POS",
        ),
    ] {
        prompt.push_str(&format!(
            "<item id=\"{id}\">{}</item>\n",
            json!({"id": id, "subject": subject, "body": body, "product": product})
        ));
    }
    let request = json!({
        "model": "claude-test", "max_tokens": 4096,
        "tools": [{"name": "propose_item_plan", "input_schema": schema}],
        "tool_choice": {"type": "tool", "name": "propose_item_plan"},
        "messages": [{"role": "user", "content": prompt}]
    });
    let proposal = tool_input(&messages(&sim, request.clone()).await.json());
    assert_eq!(proposal["chunking"], "fixed", "{proposal}");
    let size = proposal["chunk_size"].as_u64().unwrap_or(0);
    assert!((1..=200).contains(&size), "{proposal}");
    assert!(
        proposal["instructions"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Triage each ticket"),
        "{proposal}"
    );
    let fields = proposal["fields"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = fields.iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(
        names,
        ["category", "priority", "product", "summary"],
        "{proposal}"
    );
    assert_eq!(
        strings(&fields[0]["values"]),
        ["refund", "login", "other"],
        "{proposal}"
    );
    assert_eq!(fields[2]["nullable"], true);
    assert_eq!(tool_input(&messages(&sim, request).await.json()), proposal);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_rejected_plan_comes_back_without_what_the_rejection_names() {
    let sim = start(SimConfig::default()).await;
    let files = ["src/handlers/orders.ts", "src/handlers/users.ts"];
    let mut request = plan_request(
        "Add input validation to every handler in src/handlers and add unit tests.",
        &files,
    );
    let first = tool_input(&messages(&sim, request.clone()).await.json());
    let rejection = "The plan was rejected. Fix every error below and call `submit_plan` again with the whole corrected plan.\n- add-users: scope `src/handlers/users.ts` — reaches `src/handlers/users.ts`, outside the allowed paths (paths.allow / paths.deny)\n- test-users: scope `src/handlers/users.ts` — reaches `src/handlers/users.ts`, outside the allowed paths (paths.allow / paths.deny)";
    if let Some(list) = request["messages"].as_array_mut() {
        list.push(json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "submit_plan", "input": first}]}));
        list.push(json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": true, "content": rejection}]}));
    }
    let second = tool_input(&messages(&sim, request).await.json());
    let scopes: Vec<(String, Vec<&str>)> = second["subtasks"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|s| {
                    (
                        s["task_id"].as_str().unwrap_or_default().to_string(),
                        strings(&s["scope"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        scopes,
        [
            ("add-orders".to_string(), vec!["src/handlers/orders.ts"]),
            ("add-users".to_string(), vec![]),
            (
                "test-orders".to_string(),
                vec!["src/handlers/orders.ts", "tests/handlers/orders.test.ts"]
            ),
            (
                "test-users".to_string(),
                vec!["tests/handlers/users.test.ts"]
            ),
            (
                "run-tests".to_string(),
                vec![
                    "tests/handlers/orders.test.ts",
                    "tests/handlers/users.test.ts"
                ]
            ),
        ]
        .into_iter()
        .filter(|(_, scope)| !scope.is_empty())
        .collect::<Vec<_>>(),
        "{second}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_cut_short_file_list_gets_one_agent_per_subdirectory() {
    let sim = start(SimConfig::default()).await;
    let mut request = plan_request(
        "Add a license header to every file in src",
        &["src/a/1.ts", "src/a/2.ts"],
    );
    // As a large repository's tree view says it: more files than listed.
    let content = request["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .replace(
            "Directories (files, size):\nsrc/ 5 files, 2.0 KB\n",
            "Directories (files, size):\nsrc/ 6 files, 2.0 KB\nsrc/a/ 3 files, 1.0 KB\nsrc/b/ 3 files, 1.0 KB\n",
        )
        .replace("Files:\n", "Files (first 2 of 6):\n");
    request["messages"][0]["content"] = json!(content);
    let plan = tool_input(&messages(&sim, request).await.json());
    let scopes: Vec<Vec<&str>> = plan["subtasks"]
        .as_array()
        .map(|list| list.iter().map(|s| strings(&s["scope"])).collect())
        .unwrap_or_default();
    assert_eq!(scopes, [vec!["src/a"], vec!["src/b"]], "{plan}");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_task_in_stages_orders_its_agents() {
    let sim = start(SimConfig::default()).await;
    let files = ["src/handlers/a.ts", "src/handlers/b.ts", "src/lib/util.ts"];
    let request = plan_request(
        "Move the shared helpers into src/lib/util.ts, then update every handler in src/handlers to use them.",
        &files,
    );
    let plan = tool_input(&messages(&sim, request).await.json());
    let order: Vec<(&str, Vec<&str>)> = plan["subtasks"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|s| {
                    (
                        s["task_id"].as_str().unwrap_or_default(),
                        strings(&s["depends_on"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        order,
        [
            ("move-a", vec!["move-util"]),
            ("move-b", vec!["move-util"]),
            ("move-util", vec![]),
        ],
        "{plan}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_reading_agent_lists_what_it_may_read_and_reads_what_its_task_names() {
    let sim = start(SimConfig::default()).await;
    let system = "Task review-a: Part of the task \"Review src/a.ts and src/b.ts\". Read the file src/a.ts and report what you find; change nothing.\n\nYou may not change any file.\n\nTools: list_files, read_file\n";
    let tool = |name: &str| json!({"name": name, "input_schema": {"type": "object", "properties": {"path": {"type": "string"}, "pattern": {"type": "string"}}}});
    let report = json!({"name": "report_result", "input_schema": {"type": "object", "properties": {
        "status": {"type": "string", "enum": ["success", "partial", "failure"]},
        "summary": {"type": "string"}, "files_changed": {"type": "array", "items": {"type": "string"}}}}});
    let mut conversation = vec![json!({"role": "user", "content": "Review it."})];
    let mut calls = Vec::new();
    for _ in 0..3 {
        let reply = messages(
            &sim,
            json!({"model": "claude-test", "max_tokens": 1000, "system": system,
                   "tools": [tool("list_files"), tool("read_file"), report],
                   "messages": conversation}),
        )
        .await
        .json();
        let block = reply["content"][0].clone();
        let name = block["name"].as_str().unwrap_or_default().to_string();
        calls.push((name.clone(), block["input"].clone()));
        if name == "report_result" {
            break;
        }
        let result = match name.as_str() {
            "list_files" => "src/a.ts\nsrc/c.ts\n",
            _ => "src/a.ts (lines 1-1 of 1):\n     1\tlet a = 1;\n",
        };
        conversation.push(json!({"role": "assistant", "content": [block.clone()]}));
        conversation.push(json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": block["id"], "content": result}]}));
    }
    let names: Vec<&str> = calls.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["list_files", "read_file", "report_result"]);
    assert_eq!(calls[1].1["path"], "src/a.ts");
    assert_eq!(calls[2].1["files_changed"], json!([]));
    assert_eq!(calls[2].1["status"], "success");
    sim.shutdown().await;
}
