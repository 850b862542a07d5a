using SharpFuzz;

namespace Vism.Fuzz;

/// <summary>
/// <c>Vism.Fuzz TARGET</c> runs one fuzz target under AFL++ (persistent mode, the input on AFL's
/// shared memory; scripts/fuzz.sh starts it). <c>Vism.Fuzz TARGET PATH...</c> replays files, or
/// every file in folders (a seed corpus, a crash AFL found) once each and says which input broke
/// which rule. A target throws <see cref="FuzzFinding"/> (or lets an unexpected exception escape)
/// when the code under test broke its contract: that is a crash to AFL.
/// </summary>
internal static class Program
{
    private static int Main(string[] args)
    {
        if (args is ["--write-seeds", string seedRoot])
        {
            Seeds.Write(seedRoot);
            return 0;
        }
        if (args.Length == 0 || !Targets.All.TryGetValue(args[0], out Func<IFuzzTarget>? create))
        {
            Console.Error.WriteLine($"usage: Vism.Fuzz TARGET [FILE|DIR...]\ntargets: {string.Join(", ", Targets.All.Keys)}");
            return 2;
        }
        if (args.Length == 1)
        {
            // AFL++ persistent mode over SharpFuzz's fork server. Instrumented code must not run before
            // Fuzzer.Run set up the coverage map: the target is made by the first input.
            IFuzzTarget? fuzzed = null;
            Fuzzer.Run(_ => (fuzzed ??= create()).Run(AflInput.Read()));
            fuzzed?.Dispose();
            return 0;
        }
        using IFuzzTarget target = create();
        int failed = 0, ran = 0;
        foreach (string file in args.Skip(1).SelectMany(Expand))
        {
            ran++;
            try
            {
                target.Run(File.ReadAllBytes(file));
            }
            catch (Exception ex)
            {
                failed++;
                // A broken rule says what broke; anything else is a bug whose stack matters.
                Console.Error.WriteLine(ex is FuzzFinding ? $"{file}: {ex.GetType().Name}: {ex.Message}" : $"{file}: {ex}");
            }
        }
        Console.WriteLine($"{args[0]}: replayed {ran} inputs, {failed} failed");
        return failed == 0 ? 0 : 1;
    }

    private static IEnumerable<string> Expand(string path) =>
        Directory.Exists(path) ? Directory.EnumerateFiles(path).Order(StringComparer.Ordinal) : [path];
}

/// <summary>
/// The input of one run under afl-fuzz. AFL++ hands each input over as the file on standard input,
/// rewriting it from its start before it tells the fork server to run. SharpFuzz 2.3.0 copies the
/// first input from standard input as soon as it has greeted afl-fuzz, before afl-fuzz has written
/// it, and runs that copy twice: once to warm up (its coverage is discarded) and once as the first
/// run afl-fuzz counts. When the copy wins the race (on a loaded machine it does), the first counted
/// run is an empty input, the coverage map stays empty and afl-fuzz stops with "No instrumentation
/// detected". Reading the file again when each run begins gives the input afl-fuzz wrote for that
/// run, whatever SharpFuzz read before.
/// </summary>
internal static class AflInput
{
    /// <summary>Standard input opened anew: a file from its start (a new open file description, so
    /// the offset SharpFuzz moves on descriptor 0 is neither used nor changed), a pipe to its end.</summary>
    private const string StandardInput = "/proc/self/fd/0";

    /// <summary>The whole input on standard input.</summary>
    public static byte[] Read() => File.ReadAllBytes(StandardInput);
}

/// <summary>One fuzz target: created once per process, then run on many inputs.</summary>
internal interface IFuzzTarget : IDisposable
{
    /// <summary>Feeds one input to the code under test.</summary>
    /// <exception cref="FuzzFinding">The code broke its contract on this input.</exception>
    void Run(ReadOnlySpan<byte> input);
}

/// <summary>The code under test broke its contract (a wrong exception, a broken invariant).</summary>
internal sealed class FuzzFinding(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>The targets by name.</summary>
internal static class Targets
{
    public static readonly IReadOnlyDictionary<string, Func<IFuzzTarget>> All = new Dictionary<string, Func<IFuzzTarget>>(StringComparer.Ordinal)
    {
        ["vhost-user"] = () => new VhostUserTarget(),
        ["vhost-user-session"] = () => new VhostUserSessionTarget(),
        ["mmio"] = () => new MmioTarget(),
        ["control"] = () => new ControlTarget(),
        ["splitqueue"] = () => new SplitQueueTarget(),
        ["config"] = () => new ConfigTarget(),
    };
}
