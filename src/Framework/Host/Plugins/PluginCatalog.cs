using System.Diagnostics.CodeAnalysis;
using System.Reflection;
using System.Text.RegularExpressions;
using McMaster.NETCore.Plugins;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Host.Config;

namespace Vism.Host.Plugins;

/// <summary>A kind a plugin registered: what <c>kind = "..."</c> selects.</summary>
/// <param name="Kind">Transport, memory or events.</param>
/// <param name="Name">The kind name, e.g. <c>vhost-user</c>.</param>
/// <param name="Implementation">The class the host creates per device.</param>
/// <param name="Options">The schema of its options class.</param>
/// <param name="Summary">One line for <c>vism plugins</c>.</param>
/// <param name="Plugin">The plugin (assembly) that registered it.</param>
public sealed record PluginRegistration(PluginKind Kind, string Name, Type Implementation, OptionsSchema Options, string Summary, PluginInfo Plugin);

/// <summary>A loaded plugin assembly.</summary>
/// <param name="Name">Its assembly name.</param>
/// <param name="Path">The main assembly file.</param>
/// <param name="Version">The assembly's informational version.</param>
public sealed record PluginInfo(string Name, string Path, string Version);

/// <summary>A plugin that could not be loaded; the others are unaffected.</summary>
/// <param name="Name">The plugin (folder or assembly) name.</param>
/// <param name="Path">Where it was found.</param>
/// <param name="Reason">Why it was refused.</param>
public sealed record PluginFailure(string Name, string Path, string Reason)
{
    public override string ToString() => $"plugin {Name} ({Path}) not loaded: {Reason}";
}

/// <summary>
/// Finds and loads plugins. A plugin is a folder holding <c>&lt;Folder&gt;.dll</c> (what
/// <c>dotnet publish</c> of a plugin project produces); a search path is either such a folder or a
/// folder of them. Each plugin gets its own load context (McMaster.NETCore.Plugins) in which the
/// contract (Vism.Abstractions), logging and DI abstractions, and the driver side (Vism.Driver) are shared with the host. A plugin that
/// fails in any way (missing dependency, other contract version, throwing constructor or Register,
/// a kind already taken) is recorded in <see cref="Failures"/> and leaves no registration behind.
/// </summary>
public sealed partial class PluginCatalog : IDisposable
{
    /// <summary>Keys of a plugin section the host consumes itself.</summary>
    public static readonly IReadOnlySet<string> ReservedKeys = new HashSet<string>(StringComparer.Ordinal) { "kind" };

    // Vism.Driver is shared too: a transport plugin may ship a Vism.Driver.IDriverConnector (its driver side
    // for `vism demo` and `vism matrix`), which the host must see as the same interface.
    private static readonly Type[] SharedTypes = [typeof(IVismPlugin), typeof(ILogger), typeof(IServiceCollection), typeof(Vism.Driver.IDriverConnector)];

    private readonly List<PluginLoader> _loaders = [];
    private readonly List<PluginInfo> _plugins = [];
    private readonly List<PluginFailure> _failures = [];
    private readonly Dictionary<(PluginKind, string), PluginRegistration> _kinds = [];
    private readonly ILogger _log;

    private PluginCatalog(ILogger log) => _log = log;

    public IReadOnlyList<PluginInfo> Plugins => _plugins;

    public IReadOnlyList<PluginFailure> Failures => _failures;

    /// <summary>Every registered kind, ordered by kind then name.</summary>
    public IEnumerable<PluginRegistration> Registrations =>
        _kinds.Values.OrderBy(r => r.Kind).ThenBy(r => r.Name, StringComparer.Ordinal);

    /// <summary>The registration of <paramref name="name"/>, when installed.</summary>
    public bool TryGet(PluginKind kind, string name, [NotNullWhen(true)] out PluginRegistration? registration) =>
        _kinds.TryGetValue((kind, name), out registration);

    /// <summary>The installed names of one kind, sorted.</summary>
    public IReadOnlyList<string> Names(PluginKind kind) =>
        _kinds.Keys.Where(k => k.Item1 == kind).Select(k => k.Item2).Order(StringComparer.Ordinal).ToList();

    /// <summary>The folder next to the program that holds the in-repo plugins.</summary>
    public static string DefaultDirectory => Path.Combine(AppContext.BaseDirectory, "plugins");

    /// <summary>Loads every plugin found under <paramref name="searchPaths"/> (missing paths are skipped;
    /// the caller validates configured ones).</summary>
    public static PluginCatalog Load(IEnumerable<string> searchPaths, ILogger log)
    {
        var catalog = new PluginCatalog(log);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (string searchPath in searchPaths)
        {
            string full = Path.GetFullPath(searchPath);
            if (!Directory.Exists(full) || !seen.Add(full)) continue;
            if (MainAssembly(full, out string? main, out _))
            {
                catalog.LoadOne(main!);
                continue;
            }
            foreach (string dir in Directory.EnumerateDirectories(full).Order(StringComparer.Ordinal))
            {
                if (!seen.Add(dir)) continue;
                if (MainAssembly(dir, out main, out string? why)) catalog.LoadOne(main!);
                else catalog.Fail(Path.GetFileName(dir), dir, why!);
            }
        }
        return catalog;
    }

    /// <summary>Finds a plugin folder's main assembly: <c>&lt;Folder&gt;.dll</c>, or the single
    /// assembly with a <c>.deps.json</c> beside it.</summary>
    private static bool MainAssembly(string dir, out string? path, out string? why)
    {
        why = null;
        path = Path.Combine(dir, Path.GetFileName(dir) + ".dll");
        if (File.Exists(path)) return true;
        string[] deps = Directory.GetFiles(dir, "*.deps.json");
        if (deps.Length == 1)
        {
            path = Path.Combine(dir, Path.GetFileName(deps[0])[..^".deps.json".Length] + ".dll");
            if (File.Exists(path)) return true;
        }
        path = null;
        why = $"no {Path.GetFileName(dir)}.dll in the folder (a plugin folder holds <Folder>.dll, as `dotnet publish -o plugins/<Name>` makes it)";
        return false;
    }

    private void Fail(string name, string path, string reason)
    {
        var failure = new PluginFailure(name, path, reason);
        _failures.Add(failure);
        _log.LogWarning("{Failure}", failure.ToString());
    }

    private void LoadOne(string mainAssembly)
    {
        string name = Path.GetFileNameWithoutExtension(mainAssembly);
        if (_plugins.Any(p => p.Name == name))
        {
            Fail(name, mainAssembly, $"a plugin named {name} is already loaded from {_plugins.First(p => p.Name == name).Path}");
            return;
        }
        PluginLoader? loader = null;
        try
        {
            loader = PluginLoader.CreateFromAssemblyFile(mainAssembly, SharedTypes, c => c.PreferSharedTypes = true);
            Assembly assembly = loader.LoadDefaultAssembly();
            string? contract = CheckContract(assembly);
            if (contract is not null)
            {
                Fail(name, mainAssembly, contract);
                loader.Dispose();
                return;
            }
            var info = new PluginInfo(name, mainAssembly,
                assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? assembly.GetName().Version?.ToString() ?? "?");
            Type[] entryTypes = assembly.GetExportedTypes()
                .Where(t => t is { IsClass: true, IsAbstract: false } && typeof(IVismPlugin).IsAssignableFrom(t))
                .ToArray();
            if (entryTypes.Length == 0)
            {
                Fail(name, mainAssembly, $"no public class implementing {nameof(IVismPlugin)}");
                loader.Dispose();
                return;
            }
            var builder = new Builder(info);
            foreach (Type entry in entryTypes)
            {
                var plugin = (IVismPlugin)Activator.CreateInstance(entry)!;
                plugin.Register(builder);
            }
            string? conflict = builder.Registrations
                .Select(r => _kinds.TryGetValue((r.Kind, r.Name), out PluginRegistration? other)
                    ? $"{Describe(r.Kind)} kind '{r.Name}' is already provided by plugin {other.Plugin.Name}"
                    : null)
                .FirstOrDefault(c => c is not null)
                ?? builder.Registrations.GroupBy(r => (r.Kind, r.Name)).Where(g => g.Count() > 1)
                    .Select(g => $"registers {Describe(g.Key.Kind)} kind '{g.Key.Name}' twice").FirstOrDefault();
            if (conflict is not null)
            {
                Fail(name, mainAssembly, conflict);
                return;
            }
            if (builder.Registrations.Count == 0)
                _log.LogWarning("plugin {Plugin} ({Path}) registered no kinds", name, mainAssembly);
            foreach (PluginRegistration r in builder.Registrations)
                _kinds.Add((r.Kind, r.Name), r);
            _plugins.Add(info);
            _loaders.Add(loader);
            _log.LogDebug("loaded plugin {Plugin} {Version} from {Path}: {Kinds}", name, info.Version, mainAssembly,
                string.Join(", ", builder.Registrations.Select(r => $"{Describe(r.Kind)} {r.Name}")));
        }
        catch (Exception ex)
        {
            Fail(name, mainAssembly, Explain(ex));
        }
    }

    /// <summary>The contract check, read from attribute data so that a plugin built against another
    /// Abstractions never has its attribute constructed.</summary>
    private static string? CheckContract(Assembly assembly)
    {
        CustomAttributeData? attribute = assembly.GetCustomAttributesData()
            .FirstOrDefault(a => a.AttributeType.FullName == typeof(VismPluginAttribute).FullName);
        if (attribute is null)
            return $"not a vism plugin: the assembly lacks [assembly: VismPlugin(VismContract.Version)]";
        if (attribute.ConstructorArguments is not [{ Value: int version }])
            return "its [assembly: VismPlugin] attribute is malformed";
        if (version != VismContract.Version)
            return $"built against plugin contract version {version}; this vism implements version {VismContract.Version} (rebuild the plugin against this Vism.Abstractions)";
        return null;
    }

    /// <summary>A one-line reason for a load failure, naming a missing dependency when there is one.</summary>
    internal static string Explain(Exception ex)
    {
        while (ex is TargetInvocationException { InnerException: Exception inner }) ex = inner;
        return ex switch
        {
            ReflectionTypeLoadException rtle when rtle.LoaderExceptions.FirstOrDefault(e => e is not null) is Exception first
                => "a type cannot be loaded: " + Explain(first),
            FileNotFoundException fnf when fnf.FileName is not null => $"missing dependency {fnf.FileName.Split(',')[0]}: {fnf.Message}",
            FileLoadException fle => $"dependency cannot be loaded: {fle.Message}",
            BadImageFormatException bad => $"not a .NET assembly for this runtime: {bad.Message}",
            TypeLoadException tle => $"type cannot be loaded ({tle.TypeName}): {tle.Message}",
            MissingMethodException mme => $"built against another API: {mme.Message}",
            _ => $"{ex.GetType().Name}: {ex.Message}" + (ex.StackTrace?.Split('\n').FirstOrDefault()?.Trim() is string at ? $" ({at})" : ""),
        };
    }

    public static string Describe(PluginKind kind) => kind switch
    {
        PluginKind.Transport => "transport",
        PluginKind.Memory => "memory",
        PluginKind.Events => "events",
        _ => kind.ToString().ToLowerInvariant(),
    };

    public void Dispose()
    {
        // Plugin load contexts are not collectible; nothing to unload. Loaders are kept alive until here.
        foreach (PluginLoader l in _loaders) l.Dispose();
        _loaders.Clear();
    }

    [GeneratedRegex("^[a-z][a-z0-9-]{0,31}$")]
    private static partial Regex KindName();

    /// <summary>Collects a plugin's registrations; they are committed only when Register returns.</summary>
    private sealed class Builder(PluginInfo plugin) : IVismPluginBuilder
    {
        public List<PluginRegistration> Registrations { get; } = [];

        public IVismPluginBuilder AddTransport<TTransport, TOptions>(string kind, string summary)
            where TTransport : class, ITransport where TOptions : class, new() =>
            Add(PluginKind.Transport, kind, typeof(TTransport), typeof(TOptions), summary);

        public IVismPluginBuilder AddMemory<TBackend, TOptions>(string kind, string summary)
            where TBackend : class, IMemoryBackend where TOptions : class, new() =>
            Add(PluginKind.Memory, kind, typeof(TBackend), typeof(TOptions), summary);

        public IVismPluginBuilder AddEvents<TChannel, TOptions>(string kind, string summary)
            where TChannel : class, IEventChannel where TOptions : class, new() =>
            Add(PluginKind.Events, kind, typeof(TChannel), typeof(TOptions), summary);

        private Builder Add(PluginKind kind, string name, Type implementation, Type options, string summary)
        {
            if (name is null || !KindName().IsMatch(name))
                throw new ArgumentException($"kind name '{name}' must be lower-case letters, digits and '-' (at most 32), starting with a letter");
            if (implementation.IsAbstract || implementation.GetConstructors().Length == 0)
                throw new ArgumentException($"{implementation.FullName} has no public constructor");
            Registrations.Add(new PluginRegistration(kind, name, implementation, OptionsSchema.Create(options, ReservedKeys),
                string.IsNullOrWhiteSpace(summary) ? "(no summary)" : summary.Trim(), plugin));
            return this;
        }
    }
}
