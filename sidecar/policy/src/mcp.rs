//! The MCP vocabulary, in one place: every method mcp-guard knows, how it is governed
//! ([`Class`]), the item it names ([`Item`]) and, for the list methods, how their answers are
//! filtered ([`List`]). Nothing else on the request path matches method names.
//!
//! The rule it encodes (docs/policy.md, "Governed methods"): a short built-in list of protocol
//! plumbing that names no item passes without a decision; list answers are decided item by item;
//! every other method, known or not, goes to the policy, and what the policy does not allow is
//! denied.

use serde_json::{Map, Value};

/// How a method is governed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Protocol plumbing that names no item: passes without a decision.
    Plumbing,
    /// A list: forwarded, its answer filtered item by item (each item decided by the policy).
    List(List),
    /// Decided by the policy, with the item it names, if any.
    Governed,
}

macro_rules! methods {
    ($($variant:ident => $name:literal, $class:expr;)*) => {
        /// An MCP method, parsed once from a message's `method`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Method {
            $($variant,)*
            /// Any other method: a vendor's, or one a newer revision adds. Governed.
            Other,
        }

        impl Method {
            /// Every known method (not [`Method::Other`]).
            pub const KNOWN: &'static [Method] = &[$(Method::$variant,)*];

            /// The method named `name`; [`Method::Other`] when it is not known here.
            pub fn parse(name: &str) -> Method {
                match name {
                    $($name => Method::$variant,)*
                    _ => Method::Other,
                }
            }

            /// The method's name; `None` for [`Method::Other`] (the message holds its name).
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $(Method::$variant => Some($name),)*
                    Method::Other => None,
                }
            }

            /// How the method is governed.
            pub fn class(self) -> Class {
                match self {
                    $(Method::$variant => $class,)*
                    Method::Other => Class::Governed,
                }
            }
        }
    };
}

use Class::{Governed, Plumbing};

methods! {
    // Plumbing: the handshake, liveness, discovery and flow control. None names an item.
    Initialize => "initialize", Plumbing;
    Ping => "ping", Plumbing;
    Discover => "server/discover", Plumbing;
    Initialized => "notifications/initialized", Plumbing;
    Cancelled => "notifications/cancelled", Plumbing;
    Progress => "notifications/progress", Plumbing;
    RootsListChanged => "notifications/roots/list_changed", Plumbing;
    // Lists: filtered item by item.
    ToolsList => "tools/list", Class::List(List::Tools);
    PromptsList => "prompts/list", Class::List(List::Prompts);
    ResourcesList => "resources/list", Class::List(List::Resources);
    ResourceTemplatesList => "resources/templates/list", Class::List(List::ResourceTemplates);
    // Everything else is decided.
    ToolsCall => "tools/call", Governed;
    PromptsGet => "prompts/get", Governed;
    ResourcesRead => "resources/read", Governed;
    ResourcesSubscribe => "resources/subscribe", Governed;
    ResourcesUnsubscribe => "resources/unsubscribe", Governed;
    Complete => "completion/complete", Governed;
    SetLevel => "logging/setLevel", Governed;
    TasksGet => "tasks/get", Governed;
    TasksResult => "tasks/result", Governed;
    TasksList => "tasks/list", Governed;
    TasksCancel => "tasks/cancel", Governed;
    TasksUpdate => "tasks/update", Governed;
    SubscriptionsListen => "subscriptions/listen", Governed;
    // Requests a server sends a client; a client sending them to the server is decided too.
    CreateMessage => "sampling/createMessage", Governed;
    Elicit => "elicitation/create", Governed;
    RootsList => "roots/list", Governed;
}

impl Method {
    /// The item a message of this method names, read from its `params`.
    pub fn item<P: Params + ?Sized>(self, params: Option<&P>) -> Option<Item<'_>> {
        let params = params?;
        let (kind, name) = match self {
            Method::ToolsCall => (ItemKind::Tool, params.field("name")?),
            Method::PromptsGet => (ItemKind::Prompt, params.field("name")?),
            Method::ResourcesRead | Method::ResourcesSubscribe | Method::ResourcesUnsubscribe => {
                (ItemKind::Resource, params.field("uri")?)
            }
            Method::Complete => match params.ref_field("type")? {
                "ref/prompt" => (ItemKind::Prompt, params.ref_field("name")?),
                "ref/resource" => (ItemKind::ResourceTemplate, params.ref_field("uri")?),
                _ => return None,
            },
            Method::TasksGet | Method::TasksResult | Method::TasksCancel | Method::TasksUpdate => {
                (ItemKind::Task, params.field("taskId")?)
            }
            _ => return None,
        };
        Some(Item { kind, name })
    }

    /// Whether a message of this method that names no item it should name is refused outright:
    /// a call without a tool cannot be decided for a tool.
    pub fn needs_item(self) -> bool {
        matches!(
            self,
            Method::ToolsCall
                | Method::PromptsGet
                | Method::ResourcesRead
                | Method::ResourcesSubscribe
                | Method::ResourcesUnsubscribe
        )
    }

    /// The params field the MCP 2026-07-28 `Mcp-Name` header mirrors for this method.
    pub fn mirrored_field(self) -> Option<&'static str> {
        match self {
            Method::ToolsCall | Method::PromptsGet => Some("name"),
            Method::ResourcesRead | Method::ResourcesSubscribe | Method::ResourcesUnsubscribe => {
                Some("uri")
            }
            Method::TasksGet | Method::TasksCancel | Method::TasksUpdate => Some("taskId"),
            _ => None,
        }
    }

    /// Whether the method is the item's own call (a list item's visibility is decided as one),
    /// as opposed to another method that names the item (a completion, a subscription).
    pub fn is_item_call(self) -> bool {
        matches!(
            self,
            Method::ToolsCall | Method::PromptsGet | Method::ResourcesRead
        )
    }
}

/// A message's `params`, as [`Method::item`] reads them: the parsed object on the request path,
/// a borrowed view in the audit writer.
pub trait Params {
    /// `params[key]`, when it is a string.
    fn field(&self, key: &str) -> Option<&str>;
    /// `params.ref[key]` (a completion's reference), when it is a string.
    fn ref_field(&self, key: &str) -> Option<&str>;
}

impl Params for Map<String, Value> {
    fn field(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    fn ref_field(&self, key: &str) -> Option<&str> {
        self.get("ref")?.get(key).and_then(Value::as_str)
    }
}

/// What kind of item a method names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    Tool,
    Prompt,
    /// A resource, by URI.
    Resource,
    /// A resource template, by its URI template (a completion's `ref/resource`).
    ResourceTemplate,
    /// A task of the tasks extension, by its id.
    Task,
}

impl ItemKind {
    /// The key of `input.request` that holds the item's name besides `name`.
    pub fn input_key(self) -> &'static str {
        match self {
            ItemKind::Tool => "tool",
            ItemKind::Prompt => "prompt",
            ItemKind::Resource | ItemKind::ResourceTemplate => "uri",
            ItemKind::Task => "task",
        }
    }

    /// The list that shows items of this kind, if any.
    pub fn list(self) -> Option<List> {
        match self {
            ItemKind::Tool => Some(List::Tools),
            ItemKind::Prompt => Some(List::Prompts),
            ItemKind::Resource => Some(List::Resources),
            ItemKind::ResourceTemplate => Some(List::ResourceTemplates),
            ItemKind::Task => None,
        }
    }

    /// The JSON-RPC error (code, message) MCP servers give for an item of this kind that does
    /// not exist: what a caller who may not see the item is told.
    pub fn not_found(self, name: &str) -> (i64, String) {
        match self {
            ItemKind::Tool => (-32602, format!("Unknown tool: {name}")),
            ItemKind::Prompt => (-32602, format!("Unknown prompt: {name}")),
            ItemKind::Resource | ItemKind::ResourceTemplate => {
                (-32002, format!("Resource not found: {name}"))
            }
            ItemKind::Task => (-32602, format!("Unknown task: {name}")),
        }
    }
}

/// The item a message names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item<'a> {
    pub kind: ItemKind,
    pub name: &'a str,
}

/// A list method whose answers are filtered item by item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum List {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl List {
    pub const ALL: [List; 4] = [
        List::Tools,
        List::Prompts,
        List::Resources,
        List::ResourceTemplates,
    ];

    /// The list method.
    pub fn method(self) -> Method {
        match self {
            List::Tools => Method::ToolsList,
            List::Prompts => Method::PromptsList,
            List::Resources => Method::ResourcesList,
            List::ResourceTemplates => Method::ResourceTemplatesList,
        }
    }

    /// The list method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            List::Tools => "tools/list",
            List::Prompts => "prompts/list",
            List::Resources => "resources/list",
            List::ResourceTemplates => "resources/templates/list",
        }
    }

    /// The field of the result that holds the items.
    pub fn field(self) -> &'static str {
        match self {
            List::Tools => "tools",
            List::Prompts => "prompts",
            List::Resources => "resources",
            List::ResourceTemplates => "resourceTemplates",
        }
    }

    /// The kind of the items listed.
    pub fn item_kind(self) -> ItemKind {
        match self {
            List::Tools => ItemKind::Tool,
            List::Prompts => ItemKind::Prompt,
            List::Resources => ItemKind::Resource,
            List::ResourceTemplates => ItemKind::ResourceTemplate,
        }
    }

    /// The field of an item that names it.
    pub fn item_field(self) -> &'static str {
        match self {
            List::Tools | List::Prompts => "name",
            List::Resources => "uri",
            List::ResourceTemplates => "uriTemplate",
        }
    }

    /// The call an item of this list stands for when its visibility is decided.
    pub fn item_call(self) -> Method {
        match self {
            List::Tools => Method::ToolsCall,
            List::Prompts => Method::PromptsGet,
            List::Resources | List::ResourceTemplates => Method::ResourcesRead,
        }
    }

    /// The list a result is an answer to, by its shape; for answers whose request the proxy
    /// did not see (a resumed stream), so that nothing hidden slips through unfiltered.
    pub fn by_shape(result: &Value) -> Option<List> {
        let obj = result.as_object()?;
        List::ALL
            .into_iter()
            .find(|l| obj.get(l.field()).is_some_and(Value::is_array))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_known_method_round_trips_and_unknown_is_governed() {
        for m in Method::KNOWN {
            let name = m.name().unwrap_or_default();
            assert_eq!(Method::parse(name), *m, "{name}");
        }
        for other in ["vendor/secret", "tools/call2", "", "Tools/Call"] {
            assert_eq!(Method::parse(other), Method::Other);
            assert_eq!(Method::Other.class(), Class::Governed);
        }
        let plumbing: Vec<_> = Method::KNOWN
            .iter()
            .filter(|m| m.class() == Class::Plumbing)
            .filter_map(|m| m.name())
            .collect();
        assert_eq!(
            plumbing,
            [
                "initialize",
                "ping",
                "server/discover",
                "notifications/initialized",
                "notifications/cancelled",
                "notifications/progress",
                "notifications/roots/list_changed",
            ],
            "the plumbing list is short and documented in docs/policy.md"
        );
        for l in List::ALL {
            assert_eq!(l.method().class(), Class::List(l));
            assert_eq!(Method::parse(l.as_str()), l.method());
        }
    }

    #[test]
    fn items_named() {
        let p = params(json!({"ref": {"type": "ref/prompt", "name": "greet"}}));
        assert_eq!(
            Method::Complete.item(Some(&p)),
            Some(Item {
                kind: ItemKind::Prompt,
                name: "greet"
            })
        );
        let p = params(json!({"ref": {"type": "ref/resource", "uri": "file:///{x}"}}));
        assert_eq!(
            Method::Complete.item(Some(&p)).map(|i| i.kind),
            Some(ItemKind::ResourceTemplate)
        );
        let p = params(json!({"ref": {"type": "ref/other", "name": "x"}}));
        assert_eq!(Method::Complete.item(Some(&p)), None);
        let p = params(json!({"taskId": "t-1"}));
        assert_eq!(
            Method::TasksResult.item(Some(&p)).map(|i| (i.kind, i.name)),
            Some((ItemKind::Task, "t-1"))
        );
        let p = params(json!({"uri": "note://a"}));
        assert_eq!(
            Method::ResourcesUnsubscribe.item(Some(&p)).map(|i| i.name),
            Some("note://a")
        );
        assert_eq!(Method::SetLevel.item(Some(&p)), None);
        assert_eq!(Method::ToolsCall.item::<Map<String, Value>>(None), None);
    }

    #[test]
    fn lists_by_shape() {
        assert_eq!(List::by_shape(&json!({"tools": []})), Some(List::Tools));
        assert_eq!(
            List::by_shape(&json!({"resourceTemplates": []})),
            Some(List::ResourceTemplates)
        );
        assert_eq!(List::by_shape(&json!({"content": []})), None);
    }
}
