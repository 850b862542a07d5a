namespace Vism.Host.Config;

/// <summary>One problem in a config file, printed as <c>file:line:column: key: message</c>.</summary>
/// <param name="File">The config file as the user named it.</param>
/// <param name="Pos">Where the offending key (or value) is written.</param>
/// <param name="Key">The full dotted key, e.g. <c>device[1].transport.socket-path</c>.</param>
/// <param name="Message">What is wrong and what would be right.</param>
public sealed record ConfigError(string File, TextPos Pos, string Key, string Message)
{
    public override string ToString() => $"{File}:{Pos.Line}:{Pos.Column}: {Key}: {Message}";
}

/// <summary>Collects every error of one config file, so all of them are reported at once.</summary>
public sealed class ConfigErrors(string file)
{
    private readonly List<ConfigError> _errors = [];
    private readonly List<ConfigError> _warnings = [];

    /// <summary>The config file the errors are about.</summary>
    public string File { get; } = file;

    public IReadOnlyList<ConfigError> Errors => _errors;

    public bool Any => _errors.Count > 0;

    // A blank key is legal TOML ("" = 1); it is shown quoted, so every error still names its key
    // (found by fuzzing: "file:1:1: : unknown key ''").
    public void Add(TextPos pos, string key, string message) =>
        _errors.Add(new ConfigError(File, pos, string.IsNullOrWhiteSpace(key) ? $"\"{key}\"" : key, message));

    /// <summary>Warnings: the config is valid, but something will not work as a user probably expects.</summary>
    public IReadOnlyList<ConfigError> Warnings => _warnings;

    /// <summary>Adds a warning.</summary>
    public void Warn(TextPos pos, string key, string message) => _warnings.Add(new ConfigError(File, pos, key, message));

    /// <summary>The errors in file order.</summary>
    public IEnumerable<ConfigError> Sorted() =>
        _errors.OrderBy(e => e.Pos.Line).ThenBy(e => e.Pos.Column);
}

/// <summary>Thrown by <see cref="ConfigLoader"/> when a config file is invalid; carries every error.</summary>
public sealed class ConfigException(IReadOnlyList<ConfigError> errors)
    : Exception($"{errors.Count} error(s) in the configuration")
{
    public IReadOnlyList<ConfigError> Errors { get; } = errors;
}
