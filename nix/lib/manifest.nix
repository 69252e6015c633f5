# The persist-prep manifest generator.
#
# Only builtins are used, so that the contract test can evaluate this file with a bare
# `nix-instantiate` (no nixpkgs): Nix writes the manifest and Rust reads it, and that seam must
# always be tested.
#
# `generate` takes data shaped like an evaluated NixOS configuration (impermanence's
# `config.environment.persistence`, the Home Manager users' `home.persistence`, preservation's
# `config.preservation.preserveAt`, `config.fileSystems`, `config.users`) plus
# persist-prep's own extra storages, and returns
#   { manifest; problems; storagePaths; mountUnitPaths; }
# where `manifest` is the version-1 manifest (ready for builtins.toJSON), `problems` lists
# human-readable configuration errors the module turns into assertions, `storagePaths` are the
# storage paths (for RequiresMountsFor=) and `mountUnitPaths` the bind-mount targets to order
# persist-prep before.
let
  inherit (builtins)
    attrNames
    dirOf
    concatLists
    concatStringsSep
    elem
    filter
    foldl'
    isString
    length
    map
    removeAttrs
    sort
    split
    stringLength
    substring
    ;

  # Paths NixOS mounts in the initrd whatever `neededForBoot` says (nixpkgs' utils.pathsNeededForBoot).
  defaultPathsNeededForBoot = [ "/" "/nix" "/nix/store" "/var" "/var/log" "/var/lib" "/var/lib/nixos" "/etc" "/usr" ];

  rootPerms = { user = "root"; group = "root"; mode = "0755"; };

  # Path components, without empty and "." ones; ".." is kept so that the binary rejects it loudly.
  components = p: filter (c: isString c && c != "" && c != ".") (split "/" p);

  # "/home/alice/./" -> "/home/alice"; impermanence builds such paths for files directly in a home.
  normalize = p: "/" + concatStringsSep "/" (components p);

  joinPaths = a: b: normalize "${a}/${b}";

  # Is `ancestor` equal to `p` or above it?
  contains = ancestor: p:
    let a = normalize ancestor; q = normalize p; in
    a == "/" || a == q || substring 0 (stringLength a + 1) q == a + "/";

  quote = s: "\"${s}\"";

  # Keeps the first of several equal items, in order.
  unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];

  optional = cond: x: if cond then [ x ] else [ ];
  optionalAttrs = cond: a: if cond then a else { };

  generate =
    { persistence ? { }
    , homeManager ? { }
    , preservation ? { }
    , extraStorages ? [ ]
    , fileSystems ? { }
    , users ? { }
    , groups ? { }
    , pathsNeededForBoot ? defaultPathsNeededForBoot
    }:
    let
      # A number only where the configuration fixes it (users.users.<name>.uid,
      # users.groups.<name>.gid), never from ids.nix: NixOS gives a user without `uid` a dynamic
      # id at activation, whatever ids.uids says, so baking that number would pick the wrong owner.
      uidOf = name: users.${name}.uid or null;
      gidOf = name: groups.${name}.gid or null;

      # Owner attributes with the numeric ids the configuration fixes; other names stay names
      # and the binary resolves or defers them.
      owner = { user, group, mode, uid ? null, gid ? null, ... }:
        let
          u = if uid != null then uid else uidOf user;
          g = if gid != null then gid else gidOf group;
        in
        { inherit user group mode; }
        // optionalAttrs (u != null) { uid = u; }
        // optionalAttrs (g != null) { gid = g; };

      groupOfUser = user: users.${user}.group or user;
      homeOfUser = user: users.${user}.home or "/home/${user}";

      # Impermanence's Home Manager module leaves the group null ("Home Manager doesn't seem to
      # know about the user's group"); its NixOS side fills in the user's group, and so do we.
      withGroup = p: p // { group = if p.group or null == null then groupOfUser p.user else p.group; };

      # An evaluated entry is an attribute set; a bare string is accepted for hand-written input.
      asDir = d: if isString d then { directory = d; } else d;
      asFile = f: if isString f then { file = f; } else f;

      # Impermanence's entries of one level (system, a user, or a Home Manager user) as tagged
      # records { storage; kind = "dir" | "file"; entry; }, in the order impermanence creates them.
      # `home`: null for system entries; `defaults`: the owner of the level the entries live at.
      dirRecord = { home, defaults, origin, storageDefault }: d0:
        let
          d = asDir d0;
          perms = withGroup (d.defaultPerms or defaults);
          user = d.user or defaults.user;
        in
        {
          storage = d.persistentStoragePath or storageDefault;
          kind = "dir";
          entry = {
            path = normalize (d.dirPath or (if home == null then d.directory else joinPaths home d.directory));
            parent = owner perms;
            inherit origin;
          } // owner (withGroup {
            inherit user;
            group = d.group or defaults.group;
            mode = d.mode or defaults.mode;
          });
        };

      # A file gives a file entry whose missing ancestors get the parent directory's
      # defaultPerms, plus a directory entry for the parent itself when its declared
      # attributes differ from those (impermanence creates it on both sides, like a directory).
      fileRecords = { home, defaults, origin, storageDefault }: f0:
        let
          f = asFile f0;
          pd = f.parentDirectory or { };
          perms = withGroup (pd.defaultPerms or defaults);
          filePath = normalize (f.filePath or (if home == null then f.file else joinPaths home f.file));
          parentPath = normalize (pd.dirPath or (substring 0 (stringLength filePath - stringLength (baseNameOf filePath)) filePath));
          declared = withGroup {
            user = pd.user or perms.user;
            group = pd.group or perms.group;
            mode = pd.mode or perms.mode;
          };
          storage = f.persistentStoragePath or storageDefault;
        in
        [{
          inherit storage;
          kind = "file";
          entry = { path = filePath; parent = owner perms; inherit origin; };
        }]
        ++ optional (parentPath != "/" && owner declared != owner perms) {
          inherit storage;
          kind = "dir";
          # Yields to a declared directory or home at the same path, as in impermanence,
          # where the declared one is created first and the parent then exists.
          implicit = true;
          entry = owner declared // {
            path = parentPath;
            parent = owner perms;
            origin = "${origin} (parentDirectory of ${filePath})";
          };
        };

      # The entries of one user, from `environment.persistence.<s>.users.<name>` or from Home
      # Manager's `home.persistence.<s>`: impermanence creates each home user-owned 0700, its
      # ancestors root root 0755, and the user's entries below it.
      userLevelRecords = { uname, home, originBase, storageDefault, level }:
        let
          ctx = {
            inherit home storageDefault;
            defaults = { user = uname; group = groupOfUser uname; mode = "0755"; };
          };
          dirs = map (dirRecord (ctx // { origin = "${originBase}.directories"; })) (level.directories or [ ]);
          files = concatLists (map (fileRecords (ctx // { origin = "${originBase}.files"; })) (level.files or [ ]));
          entryHome = e: (asDir e).home or home;
          homes = map
            (e: {
              storage = (asDir e).persistentStoragePath or storageDefault;
              kind = "dir";
              entry = owner { user = uname; group = groupOfUser uname; mode = "0700"; } // {
                path = normalize (entryHome e);
                parent = owner rootPerms;
                origin = originBase;
              };
            })
            ((level.directories or [ ]) ++ (level.files or [ ]));
        in
        homes ++ dirs ++ files;

      # One persistent-storage attribute of impermanence's `environment.persistence`.
      fromPersistence = name: cfg:
        let
          storageDefault = cfg.persistentStoragePath or name;
          prefix = "environment.persistence.${quote name}";
          system = { home = null; defaults = rootPerms; inherit storageDefault; };
          userRecords = uname: userLevelRecords {
            inherit uname storageDefault;
            home = homeOfUser uname;
            originBase = "${prefix}.users.${uname}";
            level = cfg.users.${uname};
          };
        in
        if !(cfg.enable or true) then [ ] else
        map (dirRecord (system // { origin = "${prefix}.directories"; })) (cfg.directories or [ ])
        ++ concatLists (map (fileRecords (system // { origin = "${prefix}.files"; })) (cfg.files or [ ]))
        ++ concatLists (map userRecords (attrNames (cfg.users or { })));

      # One Home Manager user's `home.persistence` (impermanence's home-manager.nix): paths
      # relative to `home.homeDirectory`, owned by `home.username`, in the storage named
      # without the home (impermanence adds the home itself).
      fromHomeManager = name: hm:
        let
          uname = hm.username or name;
          storageRecords = s:
            let cfg = hm.persistence.${s}; in
            if !(cfg.enable or true) then [ ] else
            userLevelRecords {
              inherit uname;
              home = hm.home or (homeOfUser uname);
              originBase = "home-manager.users.${name}.home.persistence.${quote s}";
              storageDefault = cfg.persistentStoragePath or s;
              level = cfg;
            };
        in
        concatLists (map storageRecords (attrNames (hm.persistence or { })));

      # One `preservation.preserveAt.<name>` (nix-community/preservation). Its tmpfiles rules
      # create missing ancestors root root 0755, each entry with its user, group and mode on both
      # sides, its parent with `parent.*` when `configureParent`, and each user's home with
      # `homeMode` on the storage. A `symlink` entry is a link on the root to its source: the
      # source needs its parents (a file entry) and never becomes a directory or mount point here.
      fromPreservation = name: cfg:
        let
          storage = cfg.persistentStoragePath or name;
          prefix = "preservation.preserveAt.${quote name}";
          # `:` (create-only) is what persist-prep always does; `~` (masked) depends on what
          # exists, which a manifest cannot say. "700" (NixOS's homeMode) is "0700".
          tmpfilesMode = m0:
            let m = if substring 0 1 m0 == ":" then substring 1 (stringLength m0) m0 else m0; in
            if builtins.match "[0-7]{3}" m != null then "0${m}" else m;
          entryRecords = { origin0, kind }: e0:
            let
              e = if kind == "dir" then asDir e0 else asFile e0;
              path = normalize (if kind == "dir" then e.directory else e.file);
              how = e.how or "bindmount";
              # Preservation adds the directories between a home and a user's paths itself.
              origin = if how == "_intermediate" then "${origin0} (between the home and a user path)" else origin0;
              asDirectory = kind == "dir" && how != "symlink";
              parentPath = dirOf path;
              p = e.parent or { };
              where = "${origin} (${path})";
            in
            [{
              inherit storage;
              kind = if asDirectory then "dir" else "file";
              entry = { inherit path origin; parent = owner rootPerms; }
              // optionalAttrs asDirectory (owner {
                user = e.user or "root";
                group = e.group or "root";
                mode = tmpfilesMode (e.mode or "0755");
              });
              problems = optional (asDirectory && substring 0 1 (e.mode or "") == "~")
                "persist-prep: ${where} has the masked tmpfiles mode ${quote e.mode}, whose result depends on what exists; persist-prep creates directories with one declared mode. Give an octal mode such as \"0755\".";
            }]
            ++ optional ((e.configureParent or false) && parentPath != "/") {
              inherit storage;
              kind = "dir";
              implicit = true;
              entry = owner
                {
                  user = p.user or "root";
                  group = p.group or "root";
                  mode = tmpfilesMode (p.mode or "0755");
                } // {
                path = parentPath;
                parent = owner rootPerms;
                origin = "${origin} (parent of ${path})";
              };
            };
          level = { originBase, directories ? [ ], files ? [ ], ... }:
            concatLists (map (entryRecords { origin0 = "${originBase}.directories"; kind = "dir"; }) directories)
            ++ concatLists (map (entryRecords { origin0 = "${originBase}.files"; kind = "file"; }) files);
          userRecords = uname:
            let
              u = cfg.users.${uname};
              username = u.username or uname;
              entries = (u.directories or [ ]) ++ (u.files or [ ]);
            in
            optional (entries != [ ])
              {
                inherit storage;
                kind = "dir";
                entry = owner
                  {
                    user = username;
                    group = u.homeGroup or (groupOfUser username);
                    mode = tmpfilesMode (u.homeMode or "0700");
                  } // {
                  path = normalize (u.home or (homeOfUser username));
                  parent = owner rootPerms;
                  origin = "${prefix}.users.${uname}";
                };
              }
            ++ level (u // { originBase = "${prefix}.users.${uname}"; });
        in
        level (cfg // { originBase = prefix; })
        ++ concatLists (map userRecords (attrNames (cfg.users or { })));

      # persist-prep's own storages, already shaped like the manifest: entries default to root root 0755.
      fromExtra = s:
        let
          prefix = "boot.initrd.persist-prep.storages.${quote s.path}";
          dir = d0:
            let d = if isString d0 then { path = d0; } else d0; in
            {
              storage = s.path;
              kind = "dir";
              entry = owner
                {
                  user = d.user or "root";
                  group = d.group or "root";
                  mode = d.mode or "0755";
                  uid = d.uid or null;
                  gid = d.gid or null;
                } // {
                path = normalize d.path;
                parent = owner (rootPerms // removeAttrs (d.parent or { }) [ "_module" ]);
                origin = d.origin or "${prefix}.directories";
              };
            };
          file = f0:
            let f = if isString f0 then { path = f0; } else f0; in
            {
              storage = s.path;
              kind = "file";
              entry = {
                path = normalize f.path;
                parent = owner (rootPerms // removeAttrs (f.parent or { }) [ "_module" ]);
                origin = f.origin or "${prefix}.files";
              };
            };
        in
        map dir (s.directories or [ ]) ++ map file (s.files or [ ]);

      allRecords =
        concatLists (map (n: fromPersistence n persistence.${n}) (attrNames persistence))
        ++ concatLists (map (n: fromHomeManager n homeManager.${n}) (attrNames homeManager))
        ++ concatLists (map (n: fromPreservation n preservation.${n}) (attrNames preservation))
        ++ concatLists (map fromExtra extraStorages);
      sourceProblems = concatLists (map (r: r.problems or [ ]) allRecords);

      explicitDirPaths = map (r: r.entry.path) (filter (r: r.kind == "dir" && !(r.implicit or false)) allRecords);
      records = filter (r: !(r.implicit or false) || !(elem r.entry.path explicitDirPaths)) allRecords;

      storagePaths = sort (a: b: a < b) (unique (map (r: normalize r.storage) records ++ map (s: normalize s.path) extraStorages));

      # Entries equal up to `origin` are one entry; the first declaration's origin is kept.
      withoutOrigin = e: removeAttrs e [ "origin" ];
      dedupe = foldl'
        (acc: e:
          if elem (withoutOrigin e) acc.seen then acc
          else { seen = acc.seen ++ [ (withoutOrigin e) ]; entries = acc.entries ++ [ e ]; })
        { seen = [ ]; entries = [ ]; };

      mounts = filter (fs: fs.enable or true) (map (n: fileSystems.${n} // { mountPoint = normalize (fileSystems.${n}.mountPoint or n); }) (attrNames fileSystems));

      # The longest mount point that contains the path: the file system the storage lives on.
      mountOf = path:
        let
          candidates = filter (fs: contains fs.mountPoint path) mounts;
          longest = foldl' (best: fs: if best == null || stringLength fs.mountPoint > stringLength best.mountPoint then fs else best) null candidates;
        in
        longest;

      neededForBoot = fs: (fs.neededForBoot or false) || elem fs.mountPoint pathsNeededForBoot;

      extraFor = path: foldl' (acc: s: if normalize s.path == path then acc // s else acc) { } extraStorages;

      storageOf = path:
        let
          mine = filter (r: normalize r.storage == path) records;
          entriesOf = kind: (dedupe (map (r: r.entry) (filter (r: r.kind == kind) mine))).entries;
          explicit = (extraFor path).mountPoint or null;
          fs = mountOf path;
          mountPoint = if explicit != null then normalize explicit else if fs == null then null else fs.mountPoint;
        in
        { inherit path; directories = entriesOf "dir"; files = entriesOf "file"; }
        // optionalAttrs (mountPoint != null) { inherit mountPoint; };

      storages = map storageOf storagePaths;

      # Configuration errors, each a complete message for an assertion.
      # The file system the storage needs: the one at an explicit mountPoint, else the longest one
      # containing the storage.
      fsOf = path:
        let explicit = (extraFor path).mountPoint or null; in
        if explicit == null then mountOf path
        else foldl' (found: fs: if fs.mountPoint == normalize explicit then fs else found) null mounts;

      notNeededForBoot = concatLists (map
        (path:
          let fs = fsOf path; in
          optional (fs != null && !(neededForBoot fs))
            "persist-prep: the storage ${path} lives on the file system mounted at ${fs.mountPoint}, which is not mounted in the initrd, so nothing could be created there before the bind mounts. Set fileSystems.${quote fs.mountPoint}.neededForBoot = true;")
        storagePaths);

      allDirs = concatLists (map (s: map (e: e // { storage = s.path; }) s.directories) storages);
      conflicts = concatLists (map
        (path:
          let same = filter (e: e.path == path) allDirs; in
          optional (length (unique (map (e: withoutOrigin (removeAttrs e [ "storage" ])) same)) > 1)
            "persist-prep: the directory ${path} is declared more than once with different attributes: ${concatStringsSep "; " (map (e: "${e.origin} in ${e.storage}: ${e.user}:${e.group} ${e.mode}") same)}. Declare it once.")
        (unique (map (e: e.path) allDirs)));

      # A bind mount on or above a storage would hide or loop into the persistent data; the binary
      # refuses such a manifest, so refuse it at build time already.
      overlaps = concatLists (map
        (s: concatLists (map
          (e: map
            (other: "persist-prep: ${e.path} (${e.origin}) overlaps the storage ${other}: a bind mount there would hide or loop into persistent data. Remove the entry or move the storage.")
            (filter (other: contains e.path other || contains other e.path) storagePaths))
          (s.directories ++ s.files)))
        storages);
    in
    {
      manifest = { version = 1; inherit storages; };
      problems = sourceProblems ++ notNeededForBoot ++ conflicts ++ overlaps;
      inherit storagePaths;
      mountUnitPaths = filter (p: !(elem p storagePaths) && !(builtins.any (s: contains p s) storagePaths)) (unique (map (e: e.path) allDirs));
    };
in
{
  inherit generate normalize contains defaultPathsNeededForBoot;
}
