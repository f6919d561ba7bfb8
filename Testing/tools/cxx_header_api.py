"""What Python can call on the classes a C++ header declares (VTK and Qt/PythonQt wrapping rules).

Developer-tool helper for make_slicer_api_table.py, not part of the product. A small
declaration parser, not a C++ compiler: it reads class heads, access sections and
declarations at class level, and expands the VTK accessor macros.

- VTK classes (vtk*): public methods (static ones too), the accessors the vtk*Macro
  declarations generate, and public enum values; nothing inside `#ifndef __VTK_WRAP__`
  or marked VTK_WRAPEXCLUDE.
- Qt classes (q*, ctk*): what PythonQt exposes of a QObject: Q_PROPERTY names, signals,
  slots, Q_INVOKABLE methods and enum values (public methods that are none of these are
  not callable from Python and are not listed).
"""
import re

# vtk*Macro(Name, ...) -> the methods it declares ("{}" is Name).
VTK_MACROS = {
    "vtkGetMacro": ["Get{}"], "vtkSetMacro": ["Set{}"], "vtkBooleanMacro": ["{}On", "{}Off"],
    "vtkGetStringMacro": ["Get{}"], "vtkSetStringMacro": ["Set{}"],
    "vtkGetFilePathMacro": ["Get{}"], "vtkSetFilePathMacro": ["Set{}"],
    "vtkGetObjectMacro": ["Get{}"], "vtkSetObjectMacro": ["Set{}"],
    "vtkGetSmartPointerMacro": ["Get{}"], "vtkSetSmartPointerMacro": ["Set{}"],
    "vtkGetNewMacro": ["Get{}"], "vtkGetEnumMacro": ["Get{}"], "vtkSetEnumMacro": ["Set{}"],
    "vtkSetClampMacro": ["Set{}", "Get{}MinValue", "Get{}MaxValue"],
    "vtkSetAndPropagateMacro": ["Set{}"], "vtkSetAndPropagateVector3Macro": ["Set{}"],
    "vtkSetReferenceStringBodyMacro": ["Set{}"],
}
for _n in (2, 3, 4, 6, ""):
    VTK_MACROS[f"vtkGetVector{_n}Macro"] = ["Get{}"]
    VTK_MACROS[f"vtkSetVector{_n}Macro"] = ["Set{}"]
TYPE_MACRO_METHODS = ["GetClassName", "IsA", "IsTypeOf", "SafeDownCast", "NewInstance",
                      "GetNumberOfGenerationsFromBase", "GetNumberOfGenerationsFromBaseType"]
COPY_CONTENT = {"vtkMRMLCopyContentMacro": ["CopyContent", "HasCopyContent"],
                "vtkMRMLCopyContentDefaultMacro": ["HasCopyContent"]}
# Declarations the VTK Python wrappers skip: streams, containers they cannot convert, pointers to pointers,
# templates. (`New` is called as the class itself in Python.)
UNWRAPPABLE = re.compile(r"\b(ostream|istream|std::(map|set|multimap|list|deque|pair|function|unique_ptr|shared_ptr|"
                         r"iostream|ostream|istream|tuple)|vtkIndent)\b|\w\s*\*\s*\*|\*\s*&|^template\b")
NOT_METHODS = {"if", "for", "while", "switch", "return", "sizeof", "decltype", "operator", "static_assert",
               "template", "friend", "typedef", "using", "alignas", "noexcept", "throw", "defined"}


def strip_source(text):
    """Comments, string literals and preprocessor lines removed; code the wrappers never see dropped."""
    text = re.sub(r"//\s*BTX.*?//\s*ETX", "", text, flags=re.S)  # old VTK wrapper exclusion markers
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(?:\\.|[^"\\\n])*"', '""', text)
    out, stack, skipping = [], [], False
    lines = iter(text.split("\n"))
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            while stripped.endswith("\\"):  # a multi-line directive (#define)
                stripped = next(lines, "").strip()
            directive = line.strip()[1:].strip()
            if re.match(r"if", directive):
                excluded = bool(re.match(r"ifndef\s+__VTK_WRAP__|if\s+!\s*defined\s*\(?\s*__VTK_WRAP__", directive))
                stack.append((excluded, skipping))
                skipping = skipping or excluded
            elif directive.startswith("else") or directive.startswith("elif"):
                if stack and stack[-1][0]:
                    skipping = stack[-1][1]  # the other branch of "not when wrapping" is what the wrappers see
            elif directive.startswith("endif"):
                if stack:
                    _, skipping = stack.pop()
            continue
        if not skipping:
            out.append(line)
    return "\n".join(out)


def _matching(text, start, open_char="{", close_char="}"):
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_char:
            depth += 1
        elif text[i] == close_char:
            depth -= 1
            if depth == 0:
                return i
    return len(text) - 1


CLASS_HEAD = re.compile(r"\b(?:class|struct)\s+(?:\w+_EXPORT\s+|VTK_\w+\s+|Q_DECL_\w+\s+)*(\w+)\s*(?:final\s*)?"
                        r"(:[^;{()]*)?\{")


def parse_header(text):
    """{class name: {"bases": [...], "methods": set, "properties": set, "signals": set, "slots": set,
    "invokables": set, "enums": set}} for the classes defined at the top level of a header."""
    text = strip_source(text)
    classes = {}
    pos = 0
    while True:
        m = CLASS_HEAD.search(text, pos)
        if not m:
            break
        open_brace = m.end() - 1
        close = _matching(text, open_brace)
        name = m.group(1)
        bases = []
        for part in (m.group(2) or ":")[1:].split(","):
            words = part.replace("virtual", " ").split()
            if words and words[0] in ("protected", "private"):
                continue
            words = [w for w in words if w != "public"]
            if words:
                bases.append(re.sub(r"<.*", "", words[0]).split("::")[-1])
        body = text[open_brace + 1:close]
        kind = "struct" if text[m.start():m.start() + 6] == "struct" else "class"
        classes[name] = _parse_body(name, body, kind)
        classes[name]["bases"] = bases
        pos = close + 1
    return classes


def _statements(body):
    """(text, block) pairs at the class body's top level: a declaration and its {...} block, if any."""
    out, start, i = [], 0, 0
    while i < len(body):
        c = body[i]
        if c == ";":
            out.append((body[start:i], None))
            start = i + 1
        elif c == "{":
            end = _matching(body, i)
            out.append((body[start:i], body[i + 1:end]))
            i = end
            start = end + 1
            if body[start:start + 1] == ";":
                start += 1
                i += 1
        elif c == "(":
            i = _matching(body, i, "(", ")")  # a parenthesis may hold ';' or '{' (default arguments, macros)
        elif c == ":" and body[i + 1:i + 2] != ":" and body[i - 1:i] != ":":
            # An access label; macros without ';' (Q_OBJECT, Q_PROPERTY(...)) may stand before it.
            label = re.search(r"(?:^|\s|\))((?:public|protected|private)(?:\s+(?:slots|Q_SLOTS))?|signals|Q_SIGNALS)\s*$",
                              body[start:i])
            if label:
                before = body[start:start + label.start(1)]
                if before.strip():
                    out.append((before, None))
                out.append((label.group(1) + ":", "ACCESS"))
                start = i + 1
        i += 1
    if body[start:].strip():
        out.append((body[start:], None))
    return out


def _parse_body(name, body, kind):
    info = {k: set() for k in ("methods", "properties", "signals", "slots", "invokables", "enums")}
    access, section = ("public" if kind == "struct" else "private"), "plain"
    for text, block in _statements(body):
        text = " ".join(text.split())
        if block == "ACCESS":
            label = text[:-1]
            access = label.split()[0] if label.split()[0] in ("public", "protected", "private") else "public"
            section = "signals" if label in ("signals", "Q_SIGNALS") else "slots" if "slots" in label or \
                "SLOTS" in label else "plain"
            continue
        # Macros expand at any access level where they are written; VTK writes them under public:.
        for prop in re.findall(r"Q_PROPERTY\s*\(\s*[\w:<>*&, ]+?\s+[*&]?(\w+)\s+(?:READ|MEMBER)\b", text):
            info["properties"].add(prop)
        if access != "public" and section != "signals":
            if re.search(r"\bvtkTypeMacro\b", text):  # vtkTypeMacro sits before the first public: in some classes
                info["methods"].update(TYPE_MACRO_METHODS)
            continue
        for macro, arg in re.findall(r"\b(vtk\w*Macro)\s*\(\s*(\w+)", text):
            if macro == "vtkTypeMacro":
                info["methods"].update(TYPE_MACRO_METHODS)
            elif macro in COPY_CONTENT:
                info["methods"].update(COPY_CONTENT[macro])
            for pattern in VTK_MACROS.get(macro, ()):
                info["methods"].add(pattern.format(arg))
        if re.match(r"(typedef|using|friend|template\s*<[^>]*>\s*friend)\b", text):
            continue
        if re.match(r"(enum|enum class|enum struct)\b", text) and block is not None:
            enum_name = re.match(r"enum(?:\s+class|\s+struct)?\s+(\w+)", text)
            if enum_name:
                info["enums"].add(enum_name.group(1))  # Python exposes the enum type too
            for item in block.split(","):
                enumerator = re.match(r"\s*(\w+)", item)
                if enumerator:
                    info["enums"].add(enumerator.group(1))
            continue
        if re.match(r"(class|struct|union)\b", text):
            continue
        text = re.sub(r"\b(vtk\w*Macro|Q_\w+|QT_\w+|VTK_\w+|Q_DECL_\w+)\s*\((?:[^()]|\([^()]*\))*\)", " ", text)
        if "VTK_WRAPEXCLUDE" in text or (name.startswith("vtk") and UNWRAPPABLE.search(text)):
            continue
        m = next((m for m in re.finditer(r"(~?\b[A-Za-z_]\w*)\s*\(", text) if m.group(1) not in NOT_METHODS
                  and not m.group(1).isupper() and not m.group(1).startswith("~")), None)
        if not m or m.group(1) == name or "operator" in text[:m.start()].split()[-1:]:
            continue
        method = m.group(1)
        if method == "New" and name.startswith("vtk"):
            continue
        if section == "signals":
            info["signals"].add(method)
        elif section == "slots":
            info["slots"].add(method)
        elif "Q_INVOKABLE" in " ".join(text.split()[:3]) or re.search(r"\bQ_INVOKABLE\b", text):
            info["invokables"].add(method)
        else:
            info["methods"].add(method)
    return info
